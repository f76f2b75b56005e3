"""HTTP plumbing shared by the EHR targets: sessions, timeouts, and outcome classification.

Owns `HttpTarget` (what every kind shares: the common settings, one session, local refusals, and
single requests that never follow redirects), the mapping from what `requests` returns or raises
to the outcomes in `targets.base` (TransientError, PermanentError, AuthError), the Retry-After
parser, the sanitising of server reasons, and the local refusal messages. Nothing here logs;
messages never contain anything taken from our own request (patient ids, file names, titles,
document ids, secrets).
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import socket
import ssl
import unicodedata
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ingestd import USER_AGENT
from ingestd.targets.base import (
    AuthError,
    CertificateUntrusted,
    PermanentError,
    Refusal,
    TargetError,
    TransientError,
    Upload,
)
from ingestd.targets.bodies import SourceChanged, SourceUnreadable, StreamingBody

if TYPE_CHECKING:
    from ingestd.targets import TargetSettings

CONNECT_TIMEOUT = 10.0
REASON_MAX_CHARS = 200
RETRY_STATUSES = frozenset({408, 425, 429})
_RETRY_AFTER_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


class EnvironmentOnceSession(requests.Session):
    """A Session that reads the environment's proxy and CA-bundle settings once per host.

    requests' own `trust_env` re-reads them on every request (walking os.environ for the proxy
    variables and no_proxy, and looking for ~/.netrc): about a tenth of the daemon's CPU at
    200 uploads a second. The result is the same — `https_proxy`, `http_proxy`, `no_proxy`,
    `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` as requests reads them — except that credentials never
    come from ~/.netrc: a target's credentials are its config's, and a .netrc entry for the EHR's
    host would otherwise replace our Authorization header.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self._environment: dict[tuple[str, str], tuple[dict[str, str], str | None]] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        url = url.decode() if isinstance(url, bytes) else str(url)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._environment.get(key)
        if found is None:
            ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = (requests.utils.get_environ_proxies(url), ca_bundle)
            self._environment[key] = found  # a race only computes it twice
        env_proxies, ca_bundle = found
        proxies = {**env_proxies, **(proxies or {})}
        # A target's own ca_file (the session's verify) comes before the environment's.
        if (verify is True or verify is None) and self.verify is True and ca_bundle:
            verify = ca_bundle
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def make_session(concurrency: int) -> requests.Session:
    """One session per target; urllib3 never retries on its own (a retried POST may duplicate)."""
    session = EnvironmentOnceSession()
    # One spare connection for a token request or a look-up running beside the uploads.
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, concurrency) + 1, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    return session


def timeouts(read_seconds: float) -> tuple[float, float]:
    return (CONNECT_TIMEOUT, read_seconds)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); never negative."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC per RFC 5322
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def server_reason(response: requests.Response, redact: Collection[str] = ()) -> str:
    """A short, printable reason from the server's JSON `error`/`message`, or "" if none."""
    try:
        payload = json.loads(response.content[:65536])
    except ValueError:
        return ""
    reason = _reason_from(payload)
    if not reason:
        return ""
    text = "".join(" " if unicodedata.category(c) in _UNPRINTABLE else c for c in reason)
    text = " ".join(text.split())
    # The server may quote our request back at us; what it quotes is PHI.
    for secret in sorted((s for s in redact if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "[…]")
    if len(text) > REASON_MAX_CHARS:
        text = text[: REASON_MAX_CHARS - 1] + "…"
    return text


def _reason_from(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    for key in ("error_description", "message", "error", "title", "detail"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict):
            nested = _reason_from(value)
            if nested:
                return nested
    return ""


def describe(response: requests.Response, what: str, redact: Collection[str] = ()) -> str:
    reason = server_reason(response, redact)
    text = f"{what}: HTTP {response.status_code}"
    return f"{text} ({reason})" if reason else text


def raise_for_outcome(response: requests.Response, what: str, redact: Collection[str] = ()) -> None:
    """Raise the TargetError a non-2xx answer means (a caller wanting a token refresh on 401
    checks for it first)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 401:
        raise AuthError(
            describe(response, f"{what}: the EHR refused our credentials (check them)", redact),
            status,
        )
    if 300 <= status < 400:
        # Never followed: a redirect could carry our credential headers to another host.
        raise AuthError(
            describe(response, f"{what} answered with a redirect: check base_url", redact), status
        )
    if status == 413:
        raise PermanentError(
            describe(
                response, f"{what}: the EHR or a proxy in front of it refused the size", redact
            ),
            status,
            kind="too_large",
        )
    if status == 404:
        raise PermanentError(
            describe(response, f"{what}: no such patient (check the patient id)", redact),
            status,
            kind="patient_not_found",
        )
    if status in RETRY_STATUSES or status >= 500:
        raise TransientError(
            describe(response, f"{what}: the EHR is busy or failing", redact),
            status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        raise PermanentError(
            describe(response, f"{what}: the EHR refused the document", redact),
            status,
            kind="rejected",
        )
    raise TransientError(describe(response, f"{what}: unexpected answer", redact), status)


def created_id(response: requests.Response, what: str) -> str:
    """The document id from a 2xx upload answer; without one the outcome is unknown."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    doc_id = document_id(payload.get("id")) if isinstance(payload, dict) else None
    if not doc_id:
        raise TransientError(
            f"{what}: HTTP {response.status_code} without a document id",
            response.status_code,
            sent=True,
            outcome_unknown=True,
        )
    return doc_id


def document_id(value: object) -> str | None:
    """A document id as the EHR's JSON gives it (a string or a whole number), as text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise TransientError(f"{what}: HTTP {response.status_code} with an unexpected body")
    return payload


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (args, urllib3's `reason`), its causes and contexts."""
    seen: set[int] = set()
    todo: deque[BaseException] = deque([exc])
    while todo and len(seen) < 32:
        current = todo.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _never_connected(exc: BaseException) -> bool:
    return any(
        isinstance(
            e,
            urllib3.exceptions.NewConnectionError
            | ConnectionRefusedError
            | socket.gaierror
            | urllib3.exceptions.ConnectTimeoutError,
        )
        for e in _chain(exc)
    )


@contextmanager
def transport_errors(what: str, read_timeout: float) -> Iterator[None]:
    """Translate what `requests` and our bodies raise into TargetErrors, without request details.

    The original exceptions are dropped (`from None`): their text holds the URL, and so the
    patient id.
    """
    try:
        yield
    except TargetError:
        raise
    except SourceChanged:
        raise TransientError(
            f"{what}: the file changed while it was being sent", sent=True
        ) from None
    except SourceUnreadable as exc:
        raise PermanentError(
            f"{what}: the file could not be read ({exc.errno_name})", None, kind="unreadable"
        ) from None
    except requests.ConnectTimeout:
        raise TransientError(
            f"{what}: could not connect within {CONNECT_TIMEOUT:g} s", sent=False
        ) from None
    except requests.ReadTimeout:
        raise TransientError(
            f"{what}: no answer within {read_timeout:g} s", sent=True, outcome_unknown=True
        ) from None
    except requests.ConnectionError as exc:
        problem = _certificate_problem(exc)
        if problem is not None:
            raise CertificateUntrusted(
                f"{what}: the EHR's TLS certificate did not verify ({problem})"
            ) from None
        if _never_connected(exc):
            raise TransientError(
                f"{what}: could not connect ({_root_name(exc)})", sent=False
            ) from None
        raise TransientError(
            f"{what}: connection lost ({_root_name(exc)})", sent=True, outcome_unknown=True
        ) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise TransientError(
            f"{what}: request failed ({_root_name(exc)})", sent=True, outcome_unknown=True
        ) from None


def _certificate_problem(exc: BaseException) -> str | None:
    """OpenSSL's reason when the server's certificate did not verify, else None."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = error.verify_message or error.reason or "certificate verify failed"
            return " ".join(str(reason).split())[:REASON_MAX_CHARS]
    return None


def _root_name(exc: BaseException) -> str:
    """The innermost exception's class name: says what happened without quoting the URL."""
    names = [type(e).__name__ for e in _chain(exc)]
    return names[-1] if names else type(exc).__name__


def _human_size(n: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def refuse_size(upload: Upload, target_name: str, max_bytes: int) -> Refusal | None:
    if upload.size <= max_bytes:
        return None
    have, limit = _human_size(upload.size), _human_size(max_bytes)
    if have == limit:
        have, limit = f"{upload.size} bytes", f"{max_bytes} bytes"
    return Refusal(
        "too_large",
        f"file is {have}; {target_name} accepts at most {limit}: split or compress it, "
        "then use `ingestd retry`",
    )


def refuse_type(upload: Upload, target_name: str, accept: frozenset[str]) -> Refusal | None:
    if upload.mime in accept:
        return None
    return Refusal(
        "unsupported_type",
        f"format {upload.mime} is not accepted by {target_name} "
        f"(accepts {', '.join(sorted(accept))}): convert the file, or add the format to the "
        "target's accept: list if the EHR takes it, then use `ingestd retry`",
    )


def local_refusal(
    upload: Upload,
    target_name: str,
    max_bytes: int,
    accept: frozenset[str],
    validate_patient_id: Callable[[str], str | None],
) -> Refusal | None:
    """Size, then type, then patient id: decided here, before any request."""
    refused = refuse_size(upload, target_name, max_bytes) or refuse_type(
        upload, target_name, accept
    )
    if refused:
        return refused
    problem = validate_patient_id(upload.patient_id)
    if problem:
        return Refusal(
            "invalid_patient_id",
            f"{problem}; fix the folder name or the patients: mapping, then use `ingestd retry`",
        )
    return None


class CommonOptions(TypedDict, total=False):
    """The settings every kind takes besides its own options, as constructor keywords."""

    concurrency: int
    accept: frozenset[str] | None  # None: the kind's default list
    max_bytes: int | None  # None: the kind's default limit
    timeout_seconds: float
    ca_file: str | None  # None: the system's CAs, or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE


class HttpTarget:
    """What every EHR target shares. A kind's class attributes are all the registry knows of it;
    its own config options (`required`, `optional`) are its constructor's keywords."""

    kind: str
    required: ClassVar[frozenset[str]]
    optional: ClassVar[frozenset[str]]
    default_accept: ClassVar[frozenset[str]]
    default_max_bytes: ClassVar[int]

    def __init__(
        self,
        name: str,
        *,
        concurrency: int = 4,
        accept: frozenset[str] | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float = 60.0,
        ca_file: str | None = None,
    ) -> None:
        self.name = name
        self.accept = self.default_accept if accept is None else frozenset(accept)
        self.max_bytes = self.default_max_bytes if max_bytes is None else max_bytes
        self.timeout_seconds = timeout_seconds
        self._session = make_session(concurrency)
        if ca_file is not None:
            # Every request of the target, its token requests included, trusts this file.
            self._session.verify = ca_file

    @classmethod
    def from_settings(cls, cfg: TargetSettings) -> Self:
        """The target `cfg` describes; the registry has checked its options against the kind's."""
        return cls(
            cfg.name,
            **cfg.options,
            concurrency=cfg.concurrency,
            accept=cfg.accept,
            max_bytes=cfg.max_bytes,
            timeout_seconds=cfg.timeout_seconds,
            ca_file=cfg.ca_file,
        )

    @staticmethod
    def validate_patient_id(patient_id: str) -> str | None:
        """An error message (never quoting the id) or None when this kind takes the id."""
        raise NotImplementedError

    @staticmethod
    def validate_options(options: Mapping[str, str]) -> dict[str, str]:
        """Problems with option values, by option key; messages never quote the value."""
        return {}

    def send(self, upload: Upload) -> str:
        raise NotImplementedError

    def find(self, upload: Upload) -> str | None:
        raise NotImplementedError

    def refusal(self, upload: Upload) -> Refusal | None:
        return local_refusal(
            upload, self.name, self.max_bytes, self.accept, self.validate_patient_id
        )

    def close(self) -> None:
        self._session.close()

    def _post(
        self, url: str, body: StreamingBody, what: str, headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        """One POST of a streaming body; its TargetError says `what` failed."""
        with transport_errors(what, self.timeout_seconds):
            return self._session.post(
                url,
                data=body,  # type: ignore[arg-type, unused-ignore]  # a sized reader; requests streams it
                headers={**(headers or {}), "Content-Type": body.content_type},
                timeout=timeouts(self.timeout_seconds),
                # Never followed: a redirect could carry our credential headers to another host.
                allow_redirects=False,
            )

    def _get_once(
        self, url: str, what: str, headers: Mapping[str, str] | None = None, *, stream: bool = False
    ) -> requests.Response:
        """One GET; its TargetError says `what` failed."""
        with transport_errors(what, self.timeout_seconds):
            return self._session.get(
                url,
                headers=headers,
                timeout=timeouts(self.timeout_seconds),
                allow_redirects=False,
                stream=stream,
            )
