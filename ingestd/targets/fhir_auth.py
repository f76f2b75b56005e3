"""A FHIR target's options (`validate_options`: one auth form, a size, a URI) and how it
authenticates: a static bearer token, OAuth2 client credentials with a
secret, or SMART Backend Services (`private_key_jwt`); or nothing, for an open test server.

The OAuth2 variants share `oauth2.TokenSource` (its cache and its one-new-token rule: a 401 drops
the token and earns one resend; a 401 for the replacement means the credentials are wrong).
"""

from __future__ import annotations

from collections.abc import Mapping

import requests

from ingestd import sizes
from ingestd.targets.oauth2 import TOKEN_AUTH_MODES, TokenSource
from ingestd.targets.smart import KeyProblem, assertion_maker

AUTH_FORMS = (
    "bearer_token; token_url + client_id + client_secret; "
    "or token_url + client_id + private_key + key_id"
)
# SMART v1 scopes for what a FHIR target does: create and read documents, find patients.
DEFAULT_SMART_SCOPE = (
    "system/DocumentReference.write system/DocumentReference.read system/Binary.write "
    "system/Binary.read system/Patient.read"
)


def auth_problems(options: Mapping[str, str]) -> dict[str, str]:
    """Which auth form the options give, as problems by option key (empty: one form, or none)."""
    given = {key for key in options if options[key] != ""}
    problems: dict[str, str] = {}
    oauth = {"token_url", "client_id", "client_secret", "private_key", "key_id", "scope"}
    if "bearer_token" in given and given & oauth:
        problems["bearer_token"] = f"give one auth form only: {AUTH_FORMS}"
        return problems
    if not given & oauth:
        return problems
    for needed in ("token_url", "client_id"):
        if needed not in given:
            problems[min(given & oauth)] = f"OAuth2 needs {needed} too ({AUTH_FORMS})"
            return problems
    has_secret, has_key = "client_secret" in given, "private_key" in given
    if has_secret == has_key:
        problems["client_id"] = (
            "give client_secret (client credentials) or private_key + key_id "
            "(SMART Backend Services), not both or neither"
        )
    elif has_key and "key_id" not in given:
        problems["private_key"] = "private_key needs key_id (the kid the server knows it by)"
    elif has_secret and "key_id" in given:
        problems["key_id"] = "key_id goes with private_key, not client_secret"
    if options.get("token_auth", "auto") not in TOKEN_AUTH_MODES:
        problems["token_auth"] = "token_auth must be one of: " + ", ".join(TOKEN_AUTH_MODES)
    return problems


AUTH_OPTIONS = ("bearer_token", "token_url", "client_id", "client_secret", "private_key")


def parse_size(text: str) -> int | None:
    """`binary_above` in bytes (the same forms as `max_bytes`: `3 MiB`, `1.5 MB`, `3145728`)."""
    try:
        return sizes.parse_size(text)
    except ValueError:
        return None


def validate_options(options: Mapping[str, str]) -> dict[str, str]:
    problems = auth_problems(options)
    if "binary_above" in options and parse_size(options["binary_above"]) is None:
        problems["binary_above"] = "binary_above must be a size in bytes, e.g. 3 MiB or 3145728"
    system = options.get("identifier_system")
    if system is not None and (":" not in system or any(c in system for c in " |")):
        problems["identifier_system"] = "identifier_system must be a URI without spaces or '|'"
    return problems


class FhirAuth:
    """The Authorization header for each request, and what a 401 means."""

    def __init__(
        self,
        session: requests.Session,
        options: Mapping[str, str],
        *,
        name: str,
        timeout_seconds: float,
    ) -> None:
        self._bearer = options.get("bearer_token") or None
        self._tokens: TokenSource | None = None
        token_url = options.get("token_url")
        client_id = options.get("client_id")
        if not token_url or not client_id:
            return
        private_key = options.get("private_key")
        assertion = None
        if private_key:
            try:
                assertion = assertion_maker(
                    private_key,
                    client_id=client_id,
                    token_url=token_url,
                    key_id=options.get("key_id", ""),
                )
            except KeyProblem as exc:
                raise ValueError(str(exc)) from None
        default_scope = DEFAULT_SMART_SCOPE if private_key else None
        self._tokens = TokenSource(
            session,
            token_url=token_url,
            client_id=client_id,
            client_secret=options.get("client_secret", ""),
            client_auth=options.get("token_auth") or "auto",
            scope=options.get("scope") or default_scope,
            timeout_seconds=timeout_seconds,
            assertion=assertion,
            label=f"{name} token request",
        )

    def header(self) -> tuple[dict[str, str], str | None]:
        """(headers, token): the token to report back with `answered`."""
        if self._tokens is not None:
            token, _fresh = self._tokens.get()
            return {"Authorization": f"Bearer {token}"}, token
        if self._bearer is not None:
            return {"Authorization": f"Bearer {self._bearer}"}, None
        return {}, None

    def answered(self, status: int, token: str | None) -> bool:
        """Hear the API's answer to a request sent with `token`: True when a 401 is worth one
        resend with a new token (a token revoked or rotated on the server is routine)."""
        if self._tokens is None or token is None:
            return False
        if status != 401:
            self._tokens.accepted(token)
            return False
        return not self._tokens.refused(token)
