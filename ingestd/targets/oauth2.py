"""OAuth2 client credentials (RFC 6749 §4.4) for the targets that need a bearer token: the token
request (HTTP Basic client authentication first, as RFC 6749 says servers must support it, with
the id and secret form-encoded and `%20` for a space so percent-decoders read them too; then the
raw pair; then form fields), the token cache (until expires_in minus a margin), and the rule for
a refused token: one new token and one resend, a second refusal means the credentials are wrong.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from ingestd.targets.answers import RETRY_STATUSES, describe, parse_retry_after
from ingestd.targets.base import AuthError, TransientError
from ingestd.targets.transport import timeouts, transport_errors

TOKEN_AUTH_MODES = ("auto", "basic", "body")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_MARGIN_SECONDS = 30.0
TOKEN_DEFAULT_LIFETIME = 60.0


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
        assertion: Callable[[], str] | None = None,
        label: str = "nymbl token request",
    ) -> None:
        self._session = session
        # private_key_jwt (RFC 7523, SMART Backend Services): a new signed assertion per request
        # authenticates the client instead of a secret.
        self._assertion = assertion
        self._label = label
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
        # Replacement tokens whose 401 condemned the credentials. A set, not the last one: with
        # several uploads at once, a later replacement can be condemned before a request sent
        # with an earlier one comes back, and that request must not go round again.
        self._condemned: set[str] = set()

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
            if value in self._condemned:
                return True  # requests sent beside the one that found it out
            token = self._token
            if token is None or token.value != value:
                # Another request saw the 401 first and dropped it; its replacement decides.
                return False
            self._token = None
            if token.replaces_refused and self._refused:
                self._condemned.add(value)
                return True
            self._refused = True
            return False

    def accepted(self, value: str) -> None:
        """The API took `value`: a later 401 is again one refusal, not a second."""
        token = self._token  # read once: `refused` may clear it from another thread
        if self._refused and token is not None and token.value == value:
            with self._lock:
                self._refused = False
                self._condemned.clear()

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
        if self._assertion is not None:
            return ["jwt"]
        basic = ["basic"]
        if raw_differs and ":" not in self._client_id:
            basic.append("basic-raw")
        if self._client_auth == "basic":
            return basic
        if self._client_auth == "body":
            return ["body"]
        return [*basic, "body"]

    def _fetch_with(self, client_auth: str) -> tuple[str, float]:
        what = self._label
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
        elif client_auth == "jwt" and self._assertion is not None:
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = self._assertion()
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
        # A server may quote what it was sent in its error: never into a receipt or a log.
        secrets = [self._client_id, self._client_secret, form.get("client_assertion", "")]
        if status in RETRY_STATUSES or status >= 500:
            raise TransientError(
                describe(response, f"{what}: the token endpoint is busy or failing", secrets),
                status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                sent=False,
            )
        if not 200 <= status < 300:
            raise TokenRefused(
                describe(
                    response,
                    f"{what} refused: check client_id, "
                    + (
                        "private_key, key_id (the server must hold its public key), the clock"
                        if self._assertion is not None
                        else "client_secret"
                    )
                    + ", token_url and token_auth",
                    secrets,
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
