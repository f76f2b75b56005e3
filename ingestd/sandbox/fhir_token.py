"""The sandbox FHIR server's token endpoint and bearer check: OAuth2 client credentials with a
client secret (HTTP Basic or form fields), or a `private_key_jwt` assertion (SMART Backend
Services) verified with the public key of its `kid`; and the static bearer token for tests.

Its key pairs are made once per process (`sandbox_key_pem` gives the private halves to the
tests and the demo). Assertions need PyJWT and cryptography; without them they are refused.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS, same_secret
from ingestd.sandbox.oauth import _basic, _form, _oauth_error
from ingestd.sandbox.wire import Context, Request, Response, Route, json_response

PATH = "/fhir/auth/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY_IDS = {"sandbox-rs384": "RS384", "sandbox-es384": "ES384"}
MAX_ASSERTION_SECONDS = 300 + 60  # SMART: exp at most 5 minutes out (a minute of clock skew)
_lock = threading.Lock()
_keys: dict[str, Any] = {}


def _key(kid: str) -> Any:
    """The private key of `kid`, made on first use (cryptography is then required)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    with _lock:
        if kid not in _keys:
            if KEY_IDS[kid] == "RS384":
                _keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            else:
                _keys[kid] = ec.generate_private_key(ec.SECP384R1())
        return _keys[kid]


def sandbox_key_pem(kid: str = "sandbox-rs384") -> str:
    """The private key (PKCS#8 PEM) a client signs its assertions with for `kid`."""
    from cryptography.hazmat.primitives import serialization

    return (
        _key(kid)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )


def route(method: str) -> Route:
    if method != "POST":
        return Route("token", "token", _not_allowed)
    return Route("token", "token", _token)


def _not_allowed(ctx: Context, req: Request) -> Response:
    return json_response(
        405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"}
    )


def _refused(description: str) -> Exception:
    return _oauth_error(401, "invalid_client", description)


def _verify_assertion(ctx: Context, form: dict[str, str]) -> None:
    if form.get("client_assertion_type") != JWT_BEARER:
        raise _oauth_error(400, "invalid_request", "client_assertion_type must be jwt-bearer")
    try:
        import jwt
    except ImportError:
        raise _refused("private_key_jwt is not supported here (no PyJWT)") from None
    assertion = form.get("client_assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise _refused("client_assertion is not a JWT") from None
    kid = header.get("kid")
    if kid not in KEY_IDS or header.get("alg") != KEY_IDS[kid]:
        raise _refused("unknown kid, or an algorithm other than the key's")
    client_id = SANDBOX_CREDENTIALS["fhir"]["client_id"]
    try:
        claims = jwt.decode(
            assertion,
            _key(kid).public_key(),
            algorithms=[KEY_IDS[kid]],
            audience=ctx.url + PATH,
            issuer=client_id,
            options={"require": ["exp", "iss", "sub", "aud", "jti"], "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise _refused(f"client_assertion refused ({type(exc).__name__})") from None
    now = time.time() + ctx.fhir.clock_ahead_seconds
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
        raise _refused("client_assertion has expired")
    if claims.get("sub") != client_id:
        raise _refused("client_assertion sub must be the client_id")
    if claims["exp"] > now + MAX_ASSERTION_SECONDS:
        raise _refused("client_assertion exp is more than 5 minutes away")
    if not ctx.fhir.first_use(str(claims["jti"])):
        raise _refused("client_assertion jti was used before")


def _verify_secret(req: Request, form: dict[str, str]) -> None:
    creds = SANDBOX_CREDENTIALS["fhir"]
    header = req.header("Authorization")
    if header is not None and header.strip().lower().startswith("basic "):
        client_id, secret = _basic(header)
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not (
        same_secret(client_id, creds["client_id"]) and same_secret(secret, creds["client_secret"])
    ):
        raise _refused("client authentication failed")


def _token(ctx: Context, req: Request) -> Response:
    form = _form(req)
    if "client_assertion" in form or "client_assertion_type" in form:
        _verify_assertion(ctx, form)
    else:
        _verify_secret(req, form)
    if form.get("grant_type") != "client_credentials":
        raise _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    payload = {
        "access_token": ctx.store.issue_token(ctx.token_ttl_seconds),
        "token_type": "Bearer",
        "expires_in": math.ceil(ctx.token_ttl_seconds),
        "scope": form.get("scope", "system/*.*"),
    }
    return json_response(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def bearer_ok(ctx: Context, req: Request) -> bool:
    header = req.header("Authorization") or ""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    token = token.strip()
    static = SANDBOX_CREDENTIALS["fhir"]["bearer_token"]
    return same_secret(token, static) or ctx.store.token_valid(token)
