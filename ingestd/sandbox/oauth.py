"""Nymbl's OAuth 2.0 token endpoint: the client credentials grant (RFC 6749 section 4.4).

The client authenticates with form fields or HTTP Basic (section 2.3.1), never both; errors use
the RFC's JSON shape (`error`, `error_description`).
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote_plus

from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS, same_secret
from ingestd.sandbox.wire import Abort, Context, Request, Response, Route, json_response

PATH = "/nymbl/oauth2/token"
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="nymbl"'}


def route(method: str) -> Route:
    if method != "POST":
        return Route("token", "token", _not_allowed)
    return Route("token", "token", _token)


def _oauth_error(
    status: int, code: str, description: str, headers: Mapping[str, str] | None = None
) -> Abort:
    body = {"error": code, "error_description": description}
    return Abort(json_response(status, body, {**(headers or {}), "Cache-Control": "no-store"}))


def _not_allowed(ctx: Context, req: Request) -> Response:
    return json_response(
        405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"}
    )


def _form(req: Request) -> dict[str, str]:
    if req.media_type()[0] != "application/x-www-form-urlencoded":
        raise _oauth_error(400, "invalid_request", "body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(req.take_body().decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _oauth_error(400, "invalid_request", "malformed form body") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _oauth_error(400, "invalid_request", "a parameter is repeated")
    return form


def _basic(header: str) -> tuple[str, str]:
    value = header.strip().partition(" ")[2]
    try:
        decoded = binascii.a2b_base64(value.strip(), strict_mode=True).decode("utf-8")
    except ValueError:
        raise _oauth_error(
            401, "invalid_client", "malformed Basic credentials", _BASIC_CHALLENGE
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _oauth_error(401, "invalid_client", "malformed Basic credentials", _BASIC_CHALLENGE)
    # RFC 6749 2.3.1: both are form-urlencoded before they are joined and base64-encoded.
    return unquote_plus(client_id), unquote_plus(secret)


def _client(ctx: Context, req: Request, form: dict[str, str]) -> None:
    creds = SANDBOX_CREDENTIALS["nymbl"]
    header = req.header("Authorization")
    # Another scheme (a stray Bearer) is not client authentication; servers ignore it.
    uses_basic = header is not None and header.strip().lower().startswith("basic ")
    if ("basic" if uses_basic else "body") not in ctx.token_client_auth:
        raise _oauth_error(401, "invalid_client", "client authentication method not supported")
    if uses_basic and header is not None:
        if "client_secret" in form:
            raise _oauth_error(400, "invalid_request", "more than one client authentication")
        client_id, secret = _basic(header)
        if form.get("client_id", client_id) != client_id:
            raise _oauth_error(400, "invalid_request", "client_id differs from Basic credentials")
        challenge: Mapping[str, str] = _BASIC_CHALLENGE
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        challenge = {}
    if not (
        same_secret(client_id, creds["client_id"]) and same_secret(secret, creds["client_secret"])
    ):
        raise _oauth_error(401, "invalid_client", "client authentication failed", challenge)


def _token(ctx: Context, req: Request) -> Response:
    form = _form(req)
    _client(ctx, req, form)
    grant = form.get("grant_type")
    if grant is None:
        raise _oauth_error(400, "invalid_request", "grant_type is required")
    if grant != "client_credentials":
        raise _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    token = ctx.store.issue_token(ctx.token_ttl_seconds)
    payload = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": math.ceil(ctx.token_ttl_seconds),
    }
    return json_response(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"})
