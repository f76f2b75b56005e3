"""SMART Backend Services client authentication (`private_key_jwt`, RFC 7523): the private key
read once, and a new signed assertion for every token request — RS384 for an RSA key, ES384 for
an EC P-384 key, `kid` in the header, `iss` = `sub` = client_id, `aud` = the token URL, a unique
`jti` and an `exp` five minutes out (the most SMART allows).

PyJWT and cryptography are needed only here: a target configured otherwise runs without them,
and one configured so is refused with a message naming the packages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ASSERTION_LIFETIME_SECONDS = 300  # SMART: exp no more than five minutes in the future
PEM_PRIVATE_KEY = "PRIVATE KEY-----"
MAX_KEY_BYTES = 64 * 1024
MISSING_LIBRARIES = (
    "private_key (SMART Backend Services) needs PyJWT and cryptography: "
    "apt install python3-jwt python3-cryptography (or pip install 'ingestd[smart]')"
)


class KeyProblem(ValueError):
    """The key cannot be used; the message never quotes the key or its path."""


def is_pem(value: str) -> bool:
    """Whether an option holds the PEM text itself (from a secret reference), not a path."""
    return value.lstrip().startswith("-----BEGIN") and PEM_PRIVATE_KEY in value


def read_key_text(value: str) -> str:
    """The PEM text of `private_key`: the value itself, or the file it names."""
    if is_pem(value):
        return value
    try:
        with open(value, "rb") as handle:
            data = handle.read(MAX_KEY_BYTES + 1)
    except IsADirectoryError:
        raise KeyProblem("private_key names a folder; name the PEM file of the key") from None
    except OSError as exc:
        raise KeyProblem(f"private_key file cannot be read ({exc.strerror})") from None
    if len(data) > MAX_KEY_BYTES:
        raise KeyProblem("private_key file is too large to be a key")
    text = data.decode("ascii", "replace")
    if PEM_PRIVATE_KEY not in text:
        raise KeyProblem(
            "private_key holds no PEM private key (-----BEGIN PRIVATE KEY-----); "
            "convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem`"
        )
    return text


@dataclass(frozen=True)
class SigningKey:
    key: Any  # a cryptography private key object
    algorithm: str  # RS384 | ES384


def load_signing_key(value: str) -> SigningKey:
    """The private key `value` holds or names, with the algorithm it signs with."""
    text = read_key_text(value)
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise KeyProblem(MISSING_LIBRARIES) from None
    try:
        key = load_pem_private_key(text.encode("ascii", "replace"), password=None)
    except (ValueError, TypeError):
        raise KeyProblem(
            "private_key is not an unencrypted PEM private key cryptography can read"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyProblem("private_key is an RSA key under 2048 bits: SMART servers refuse it")
        return SigningKey(key, "RS384")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return SigningKey(key, "ES384")
    raise KeyProblem("private_key must be an RSA key (RS384) or an EC P-384 key (ES384)")


def assertion_maker(
    value: str,
    *,
    client_id: str,
    token_url: str,
    key_id: str,
    clock: Callable[[], float] = time.time,
) -> Callable[[], str]:
    """A function giving a fresh signed client assertion each time it is called."""
    signing = load_signing_key(value)
    try:
        import jwt
    except ImportError:
        raise KeyProblem(MISSING_LIBRARIES) from None

    def make() -> str:
        now = int(clock())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
        }
        headers = {"kid": key_id, "typ": "JWT"}
        # PyJWT 2.x (Debian 12 ships 2.6) gives str.
        return str(jwt.encode(claims, signing.key, algorithm=signing.algorithm, headers=headers))

    return make
