"""Transport for the EHR targets: one `requests` session per target (the environment's proxies and
CA bundle read once per host, ~/.netrc never), the timeouts, and what `requests` raises turned
into the outcomes of `targets.base` — a connection never made, one lost after sending (an
outcome that is unknown), a certificate that does not verify. Nothing here logs.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ingestd import USER_AGENT
from ingestd.targets.answers import REASON_MAX_CHARS
from ingestd.targets.base import (
    CertificateUntrusted,
    PermanentError,
    TargetError,
    TransientError,
)
from ingestd.targets.bodies import SourceChanged, SourceUnreadable

CONNECT_TIMEOUT = 10.0


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
