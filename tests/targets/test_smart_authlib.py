"""SMART Backend Services (`private_key_jwt`, RFC 7523) against Authlib's AuthorizationServer:
a real OAuth2 server we did not write, served by Werkzeug, verifying ingestd's client assertion
with Authlib's own `JWTBearerClientAssertion` (signature against the client's JWKS, chosen by
`kid`; iss = sub = client_id; aud; exp; a jti never seen before).

Authlib's verifier is configured as a SMART server must be: it accepts RS384 and ES384. Left
at its defaults, Authlib (1.9 here, verifying with joserfc) accepts only joserfc's "recommended"
algorithms (HS256, RS256, ES256) and so refuses every SMART assertion;
`test_authlib_defaults_refuse_smart_algorithms` records that. SMART App Launch 2.x
(client-confidential-asymmetric, used by Backend Services) has clients sign with RS384 or ES384
and servers verify both; RFC 7523 leaves the algorithm to the parties. ingestd is right; an
Authlib server needs `algorithms` set to serve SMART clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import requests

pytest.importorskip("jwt", reason="PyJWT is needed for SMART Backend Services")
pytest.importorskip("cryptography", reason="cryptography is needed for SMART Backend Services")
flask_oauth2 = pytest.importorskip(
    "authlib.integrations.flask_oauth2", reason="Authlib (Flask integration) not installed"
)
rfc7523 = pytest.importorskip("authlib.oauth2.rfc7523", reason="Authlib's RFC 7523 not installed")
joserfc_jwk = pytest.importorskip("joserfc.jwk", reason="Authlib without joserfc (older Authlib)")
joserfc_jwt = pytest.importorskip("joserfc.jwt", reason="Authlib without joserfc (older Authlib)")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from ingestd.targets.base import AuthError  # noqa: E402
from ingestd.targets.fhir_auth import FhirAuth  # noqa: E402
from ingestd.targets.oauth2 import TokenRefused, TokenSource  # noqa: E402

CLIENT_ID = "ingestd-smart"
SMART_ALGORITHMS = ["RS384", "ES384"]
PRIVATE_KEY_JWT = "private_key_jwt"


def _rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ec() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = joserfc_jwk.import_key(public, "RSA" if alg.startswith("RS") else "EC")
    return {**jwk.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class SmartClient:
    """An Authlib client model registered for private_key_jwt, with its public JWKS."""

    client_id: str
    jwks: dict[str, Any]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == PRIVATE_KEY_JWT

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass
class Server:
    base_url: str
    keys: dict[str, tuple[str, Any]]  # kid -> (alg, private key) of the registered client
    assertions: list[str] = field(default_factory=list)  # every client_assertion received
    tokens: list[str] = field(default_factory=list)
    jtis: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/smart/token"

    @property
    def stock_token_url(self) -> str:
        return f"{self.base_url}/stock/token"

    def auth(self, key: Any, kid: str, token_url: str | None = None) -> FhirAuth:
        """ingestd's FHIR auth exactly as FhirTarget builds it for a SMART target."""
        options = {
            "token_url": token_url or self.token_url,
            "client_id": CLIENT_ID,
            "private_key": _pem(key),
            "key_id": kid,
        }
        return FhirAuth(requests.Session(), options, name="authlib", timeout_seconds=10.0)


def _assertion_verifier(server: Server, audience: str, algorithms: list[str] | None) -> Any:
    class Verifier(rfc7523.JWTBearerClientAssertion):  # type: ignore[misc]
        CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

        def get_audiences(self) -> list[str]:
            return [getattr(server, audience)]  # known once the server has its port

        def validate_jti(self, claims: Any, jti: str) -> bool:
            with server.lock:
                if jti in server.jtis:
                    return False
                server.jtis.add(jti)
                return True

        def resolve_client_public_key(self, client: SmartClient) -> Any:
            return joserfc_jwk.KeySet.import_key_set(client.jwks)

        if algorithms is not None:
            # Authlib's own process_assertion_claims, with the algorithms SMART requires.
            def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
                from authlib.oauth2.rfc6749 import InvalidClientError
                from joserfc.errors import JoseError

                try:
                    token = joserfc_jwt.decode(assertion, resolve_key, algorithms=algorithms)
                except JoseError as e:
                    raise InvalidClientError(description=e.description) from e
                self.verify_claims(token.claims)
                return token.claims

    return Verifier()


def _app(server: Server) -> Any:
    flask = pytest.importorskip("flask", reason="Flask not installed")
    from authlib.oauth2.rfc6749 import grants

    class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [PRIVATE_KEY_JWT]

    jwks = {"keys": [_public_jwk(key, kid, alg) for kid, (alg, key) in server.keys.items()]}
    clients = {CLIENT_ID: SmartClient(CLIENT_ID, jwks)}
    app = flask.Flask("smart-authlib")

    def authorization_server(audience: str, algorithms: list[str] | None) -> Any:
        oauth = flask_oauth2.AuthorizationServer(
            app,
            query_client=clients.get,
            save_token=lambda token, request: server.tokens.append(token["access_token"]),
        )
        oauth.register_grant(ClientCredentials)
        oauth.register_client_auth_method(
            PRIVATE_KEY_JWT, _assertion_verifier(server, audience, algorithms)
        )
        return oauth

    smart = authorization_server("token_url", SMART_ALGORITHMS)
    stock = authorization_server("stock_token_url", None)

    def record() -> None:
        with server.lock:
            server.assertions.append(flask.request.form.get("client_assertion", ""))

    @app.post("/smart/token")
    def smart_token() -> Any:
        record()
        return smart.create_token_response()

    @app.post("/stock/token")
    def stock_token() -> Any:
        record()
        return stock.create_token_response()

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    serving = pytest.importorskip("werkzeug.serving", reason="Werkzeug not installed")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http, on loopback only
    keys = {"rs-1": ("RS384", _rsa()), "es-1": ("ES384", _ec())}
    holder = Server("", keys)
    app = _app(holder)
    httpd = serving.make_server("127.0.0.1", 0, app, threaded=True)
    holder.base_url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        httpd.shutdown()
        thread.join(10)
        mp.undo()


def _claims(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import jwt

    return jwt.get_unverified_header(assertion), jwt.decode(
        assertion, options={"verify_signature": False}
    )


@pytest.mark.parametrize(("kid", "alg"), [("rs-1", "RS384"), ("es-1", "ES384")])
def test_authlib_accepts_ingestd_assertion(server: Server, kid: str, alg: str) -> None:
    auth = server.auth(server.keys[kid][1], kid)
    before = len(server.assertions)
    headers, token = auth.header()
    assert token is not None
    assert token in server.tokens
    assert headers == {"Authorization": f"Bearer {token}"}
    # Cached: a second request needs no new token.
    assert auth.header() == (headers, token)
    sent = server.assertions[before:]
    assert len(sent) == 1
    header, claims = _claims(sent[0])
    assert (header["alg"], header["kid"]) == (alg, kid)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == server.token_url
    assert 0 < claims["exp"] - time.time() <= 300


def test_each_token_request_has_a_new_jti(server: Server) -> None:
    """Authlib refuses a jti it has seen: two fresh token fetches both pass."""
    auth = server.auth(server.keys["rs-1"][1], "rs-1")
    _, first = auth.header()
    assert first is not None
    assert auth.answered(401, first)  # a refused token: drop it, fetch a new one
    _, second = auth.header()
    assert second is not None
    assert second != first
    jtis = [_claims(a)[1]["jti"] for a in server.assertions[-2:]]
    assert jtis[0] != jtis[1]


@pytest.mark.parametrize(
    ("kid", "said"),
    [
        ("rs-1", "(invalid_client)"),  # a key the server does not hold, under a kid it knows
        ("rs-9", "(No key for kid: 'rs-9')"),  # a kid the server does not know
    ],
)
def test_a_key_the_server_does_not_hold_is_refused(server: Server, kid: str, said: str) -> None:
    stranger = _rsa()
    pem = _pem(stranger)
    auth = server.auth(stranger, kid)
    before = len(server.assertions)
    with pytest.raises(TokenRefused) as refused:
        auth.header()
    error = refused.value
    assert isinstance(error, AuthError)
    assert error.http_status in (400, 401)
    assert "private_key" in error.message  # it says what to check
    sent = server.assertions[before:]
    assert len(sent) == 1  # one attempt: no secret to try another way
    for secret in (sent[0], *sent[0].split(".")):
        assert secret not in error.message
    for line in pem.splitlines()[1:-1]:
        assert line not in error.message
    assert error.message.endswith(f"HTTP {error.http_status} {said}")


def test_a_wrong_audience_is_refused(server: Server) -> None:
    """aud must be the token URL (RFC 7523 3, SMART): a client whose token_url differs from the
    URL the server verifies against (here: posted to the SMART endpoint, aud = another URL) is
    refused, and ingestd says so as refused credentials."""
    from ingestd.targets.smart import assertion_maker

    make = assertion_maker(
        _pem(server.keys["es-1"][1]),
        client_id=CLIENT_ID,
        token_url=server.base_url,  # the server's base URL, not its token endpoint
        key_id="es-1",
    )
    source = TokenSource(
        requests.Session(),
        token_url=server.token_url,
        client_id=CLIENT_ID,
        client_secret="",
        assertion=make,
        label="authlib token request",
    )
    with pytest.raises(TokenRefused) as refused:
        source.get()
    assert "Invalid claim: 'aud'" in refused.value.message


def test_authlib_defaults_refuse_smart_algorithms(server: Server) -> None:
    """Authlib's JWTBearerClientAssertion left at its defaults (joserfc's recommended algorithms
    only) refuses RS384 and ES384, which SMART requires servers to accept: a server-side
    configuration gap, not an ingestd fault. ingestd reports it as refused credentials."""
    for kid in ("rs-1", "es-1"):
        auth = server.auth(server.keys[kid][1], kid, token_url=server.stock_token_url)
        with pytest.raises(TokenRefused) as refused:
            auth.header()
        assert "not recommended" in refused.value.message
