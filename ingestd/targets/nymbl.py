"""Nymbl target: OAuth2 client-credentials token, multipart upload, OData look-up.

Owns Nymbl's option names, its defaults (five types, 25 MiB), its digits-only patient ids, the
token cache, and the request shapes of "Uploading and Downloading Documents". One `send` is one
POST, preceded by a token request only when no valid token is cached; retries live elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Unpack
from urllib.parse import quote, urljoin, urlsplit

import requests

from ingestd.targets.base import AuthError, TransientError, Upload
from ingestd.targets.bodies import CHUNK, MultipartBody
from ingestd.targets.http import (
    RETRY_STATUSES,
    CommonOptions,
    HttpTarget,
    created_id,
    describe,
    document_id,
    json_object,
    parse_retry_after,
    raise_for_outcome,
    timeouts,
    transport_errors,
)
from ingestd.targets.lookup import Candidate, check_order, in_window, stored_at

KIND = "nymbl"
REQUIRED = frozenset({"base_url", "api_key", "token_url", "client_id", "client_secret"})
OPTIONAL = frozenset({"token_auth", "scope"})
TOKEN_AUTH_MODES = ("auto", "basic", "body")
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_ACCEPT = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    }
)
PAGE_SIZE = 100
MAX_PAGES = 1000
TOKEN_MARGIN_SECONDS = 30.0
TOKEN_DEFAULT_LIFETIME = 60.0

_DIGITS = re.compile(r"[0-9]+")


def validate_patient_id(patient_id: str) -> str | None:
    """An error message (never quoting the id) or None when Nymbl can take this patient id."""
    if _DIGITS.fullmatch(patient_id):
        return None
    return (
        "the patient id is not in a form Nymbl takes: expected digits only (a Nymbl patient number)"
    )


def validate_options(options: Mapping[str, str]) -> dict[str, str]:
    problems: dict[str, str] = {}
    if options.get("token_auth", "auto") not in TOKEN_AUTH_MODES:
        problems["token_auth"] = "token_auth must be one of: " + ", ".join(TOKEN_AUTH_MODES)
    return problems


def token_lifetime(expires_in: object) -> float:
    """How long to use a token: `expires_in` less a margin, never past half of a short life."""
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            return TOKEN_DEFAULT_LIFETIME
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return TOKEN_DEFAULT_LIFETIME
    if not expires_in > 0:
        return TOKEN_DEFAULT_LIFETIME
    return max(expires_in - TOKEN_MARGIN_SECONDS, expires_in / 2)


class TokenRefused(AuthError):
    """The token endpoint refused the client credentials: no upload request was sent."""

    sent = False


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float
    # Fetched to replace a token the API refused: a 401 for this one means wrong credentials.
    replaces_refused: bool = False


class TokenSource:
    """Client-credentials tokens, cached; one fetch at a time however many threads ask."""

    def __init__(
        self,
        session: requests.Session,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        client_auth: str = "auto",
        scope: str | None = None,
        timeout_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._client_auth = client_auth
        self._learned: str | None = None  # auto mode: the method the server accepted
        self._scope = scope
        self._timeout_seconds = timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._refused = False  # the API refused a token and none has been accepted since
        self._condemned: str | None = None  # the replacement token whose 401 condemned it

    def get(self) -> tuple[str, bool]:
        """(token, fresh): fresh when it was fetched by this very call."""
        with self._lock:
            token = self._token
            if token is not None and self._clock() < token.expires_at:
                return token.value, False
            self._token = None
            value, lifetime = self._fetch()
            self._token = _Token(value, self._clock() + lifetime, replaces_refused=self._refused)
            return value, True

    def drop(self, value: str) -> None:
        """Forget `value` if it is still the cached token (another thread may have replaced it)."""
        with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    def refused(self, value: str) -> bool:
        """The API answered 401 to `value`: True when that was already a replacement for a
        refused token, i.e. the credentials are wrong. Either way the next `get` fetches a new
        token. A token revoked or rotated on the server's side is routine: only a second fresh
        token refused says the target is misconfigured."""
        with self._lock:
            if value == self._condemned:
                return True  # requests sent beside the one that found it out
            token = self._token
            if token is None or token.value != value:
                # Another request saw the 401 first and dropped it; its replacement decides.
                return False
            self._token = None
            if token.replaces_refused and self._refused:
                self._condemned = value
                return True
            self._refused = True
            return False

    def accepted(self, value: str) -> None:
        """The API took `value`: a later 401 is again one refusal, not a second."""
        if self._refused and self._token is not None and self._token.value == value:
            with self._lock:
                self._refused = False

    def _fetch(self) -> tuple[str, float]:
        """A new token. In `auto` mode, HTTP Basic first (RFC 6749 2.3.1: every server must
        support it), then the credentials as form fields if Basic is refused; the method that
        worked is kept for later fetches. See `_methods` for the two ways of writing Basic."""
        if self._learned is not None:
            return self._fetch_with(self._learned)
        methods = self._methods()
        for method in methods[:-1]:
            try:
                result = self._fetch_with(method)
            except TokenRefused as refused:
                if refused.http_status not in (400, 401, 403):
                    raise
                continue
            self._learned = method
            return result
        result = self._fetch_with(methods[-1])
        self._learned = methods[-1]
        return result

    def _methods(self) -> list[str]:
        """Client authentication methods to try, in order.

        `basic`: RFC 6749 2.3.1 form-encodes id and secret before the Basic encoding; written
        with `%20` for a space (not `+`), both form decoders and the percent decoders some
        servers use instead (Authlib) read it back. `basic-raw`: RFC 7617 Basic with the id and
        secret as they are, in UTF-8, for servers that decode neither (older Authlib, such as
        Debian 12's 1.2); tried only when it differs and the id has no `:`.
        """
        raw_differs = _form_encoded(self._client_id) != self._client_id or (
            _form_encoded(self._client_secret) != self._client_secret
        )
        basic = ["basic"]
        if raw_differs and ":" not in self._client_id:
            basic.append("basic-raw")
        if self._client_auth == "basic":
            return basic
        if self._client_auth == "body":
            return ["body"]
        return [*basic, "body"]

    def _fetch_with(self, client_auth: str) -> tuple[str, float]:
        what = "nymbl token request"
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json"}
        if client_auth == "basic":
            headers["Authorization"] = _basic(
                _form_encoded(self._client_id), _form_encoded(self._client_secret)
            )
        elif client_auth == "basic-raw":
            headers["Authorization"] = _basic(self._client_id, self._client_secret)
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret
        try:
            with transport_errors(what, self._timeout_seconds):
                response = self._session.post(
                    self._token_url,
                    data=form,
                    headers=headers,
                    timeout=timeouts(self._timeout_seconds),
                    allow_redirects=False,
                )
        except TransientError as exc:
            raise TransientError(exc.message, exc.http_status, sent=False) from None
        status = response.status_code
        if status in RETRY_STATUSES or status >= 500:
            raise TransientError(
                describe(response, f"{what}: the token endpoint is busy or failing"),
                status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                sent=False,
            )
        if not 200 <= status < 300:
            raise TokenRefused(
                describe(
                    response,
                    f"{what} refused: check client_id, client_secret, token_url and token_auth",
                ),
                status,
            )
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        value = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(value, str) or not value:
            raise TokenRefused(
                f"{what}: HTTP {status} without an access_token: check token_url", status
            )
        return value, token_lifetime(payload.get("expires_in"))


def _form_encoded(value: str) -> str:
    """application/x-www-form-urlencoded as RFC 6749 2.3.1 asks, but with `%20` for a space:
    a form decoder reads `%20` as a space too, and a percent decoder would keep a `+`."""
    return quote(value, safe="", errors="surrogateescape")


def _basic(user: str, password: str) -> str:
    pair = f"{user}:{password}".encode("utf-8", "surrogateescape")
    return "Basic " + base64.b64encode(pair).decode("ascii")


class NymblTarget(HttpTarget):
    """One Nymbl tenant: multipart uploads with a bearer token and an API key."""

    kind = KIND
    required = REQUIRED
    optional = OPTIONAL
    default_accept = DEFAULT_ACCEPT
    default_max_bytes = DEFAULT_MAX_BYTES
    validate_patient_id = staticmethod(validate_patient_id)
    validate_options = staticmethod(validate_options)

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        token_auth: str | None = None,  # None: "auto"
        scope: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        **common: Unpack[CommonOptions],
    ) -> None:
        client_auth = token_auth or "auto"
        if client_auth not in TOKEN_AUTH_MODES:
            raise ValueError("token_auth must be one of: " + ", ".join(TOKEN_AUTH_MODES))
        super().__init__(name, **common)
        self._base_url = base_url.rstrip("/")
        self._origin = urlsplit(self._base_url)[:2]
        self._api_key = api_key
        self._tokens = TokenSource(
            self._session,
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth,
            scope=scope or None,
            timeout_seconds=self.timeout_seconds,
            clock=clock,
        )

    def send(self, upload: Upload) -> str:
        what = f"{self.name} upload"
        token, _fresh = self._tokens.get()
        fields = []
        if upload.doc_type:
            fields.append(("document_type", upload.doc_type))
        fields.append(("description", upload.fields.get("description") or upload.title))
        body = MultipartBody(upload, fields)
        response = self._post(
            f"{self._patient_url(upload)}/Documents", body, what, self._auth(token)
        )
        if response.status_code != 401:
            self._tokens.accepted(token)
        elif not self._tokens.refused(token):
            # Revoked, rotated or expired early: one new token and one resend decide.
            raise TransientError(
                f"{what}: HTTP 401; fetching a new token and sending once more",
                401,
                retry_after=0.0,
            )
        raise_for_outcome(response, what, _redact(upload))
        return created_id(response, what)

    def find(self, upload: Upload) -> str | None:
        """The patient's documents of our size, stored since we could have sent this one, are
        candidates; the one whose `$value` has our SHA-256 is ours. The name only orders them:
        an EHR may normalise it, and a parser may have read it differently."""
        redact = _redact(upload)
        try:
            candidates = self._candidates(upload, redact, use_filter=True)
        except _FilterRefused:
            candidates = self._candidates(upload, redact, use_filter=False)
        for doc_id in check_order(candidates):
            if self._same_content(upload, doc_id, [*redact, doc_id]):
                return doc_id
        return None

    def _auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "x-api-key": self._api_key}

    def _patient_url(self, upload: Upload) -> str:
        return f"{self._base_url}/Patients({quote(upload.patient_id, safe='')})"

    def _get(self, url: str, what: str, *, stream: bool = False) -> requests.Response:
        """GET with the bearer token; a 401 is retried once with a new token."""
        response: requests.Response | None = None
        for _ in range(2):
            token, _fresh = self._tokens.get()
            response = self._get_once(url, what, self._auth(token), stream=stream)
            if response.status_code != 401:
                self._tokens.accepted(token)
                return response
            if self._tokens.refused(token):
                return response
            response.close()
        assert response is not None
        return response

    def _candidates(
        self, upload: Upload, redact: list[str], *, use_filter: bool
    ) -> list[Candidate]:
        """The patient's documents of this size in the time window, over every page."""
        what = f"{self.name} look-up"
        documents = f"{self._patient_url(upload)}/Documents"
        query = ""
        if use_filter:
            condition = f"file_size_bytes eq {upload.size}"
            query = f"$filter={quote(condition, safe='')}&"
        found: list[Candidate] = []
        seen_links: set[str] = set()
        skip = 0
        url = f"{documents}?{query}$top={PAGE_SIZE}&$skip={skip}"
        for _ in range(MAX_PAGES):
            response = self._get(url, what)
            if response.status_code == 400 and use_filter and skip == 0 and not seen_links:
                raise _FilterRefused
            if response.status_code == 404:
                return found
            raise_for_outcome(response, what, redact)
            payload = json_object(response, what)
            page = payload.get("value")
            if not isinstance(page, list):
                raise TransientError(f"{what}: HTTP {response.status_code} without a value list")
            found.extend(_candidates_in(page, upload))
            next_link = payload.get("@odata.nextLink")
            if isinstance(next_link, str) and next_link:
                url = urljoin(url, next_link)
                # Our bearer token and API key go only to the configured API.
                if urlsplit(url)[:2] != self._origin or url in seen_links:
                    return found
                seen_links.add(url)
                continue
            if len(page) != PAGE_SIZE:
                # A short page is the last; a longer one means the server ignored $top.
                return found
            skip += PAGE_SIZE
            url = f"{documents}?{query}$top={PAGE_SIZE}&$skip={skip}"
        return found

    def _same_content(self, upload: Upload, doc_id: str, redact: Collection[str]) -> bool:
        what = f"{self.name} look-up"
        url = f"{self._patient_url(upload)}/Documents({quote(doc_id, safe='')})/$value"
        response = self._get(url, what, stream=True)
        try:
            if response.status_code == 404:
                return False
            raise_for_outcome(response, what, redact)
            digest = hashlib.sha256()
            size = 0
            with transport_errors(what, self.timeout_seconds):
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > upload.size:
                        return False
                    digest.update(chunk)
            return size == upload.size and digest.hexdigest() == upload.sha256
        finally:
            response.close()


class _FilterRefused(Exception):
    """The server answered 400 to our $filter: list without it and filter here."""


def _candidates_in(page: list[Any], upload: Upload) -> list[Candidate]:
    found: list[Candidate] = []
    for item in page:
        if not isinstance(item, dict):
            continue
        size = item.get("file_size_bytes")
        if size is not None and str(size) != str(upload.size):
            continue
        when = stored_at(item.get("uploaded_at"))
        if not in_window(when, upload.not_before):
            continue
        doc_id = document_id(item.get("id"))
        if doc_id is not None:
            found.append(Candidate(doc_id, item.get("file_name") == upload.file_name, when))
    return found


def _redact(upload: Upload) -> list[str]:
    return [upload.patient_id, upload.file_name, upload.title]
