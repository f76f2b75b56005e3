"""The `status_page:` section: where the daemon serves the front desk's page, and who may see it.

Owns `StatusPageConfig`, the `HOST:PORT` form both listeners take (`parse_listen`) and the
password hash's stored form (`PasswordHash`: `scrypt:N:r:p:SALT:HASH`, base64, made by
`ingestd hash-password`). A listener off the loopback interface needs a password: folder and file
names are patient data. No message echoes a value (the hash is a secret too).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field

from ingestd.config.targets import loopback
from ingestd.yamlsource import MarkedDict, Report

KEYS = ("listen", "user", "password_hash", "refresh_seconds")
DEFAULT_USER = "ingestd"
DEFAULT_REFRESH = 5.0
HASH_FORM = "scrypt:N:r:p:SALT:HASH, as `ingestd hash-password` prints it"


@dataclass(frozen=True)
class PasswordHash:
    """An scrypt hash of the page's password (hashlib.scrypt's parameters, salt and digest)."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> PasswordHash | None:
        parts = text.strip().split(":")
        if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
            return None
        n, r, p = (int(x) for x in parts[1:4])
        try:
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except binascii.Error:
            return None
        # n a power of two; bounds keep a hand-edited hash from costing more than ~64 MiB.
        if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
            return None
        if len(salt) < 16 or len(digest) < 32 or 128 * n * r > 64 * 2**20:
            return None
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        salt, digest = (base64.b64encode(x).decode() for x in (self.salt, self.digest))
        return f"scrypt:{self.n}:{self.r}:{self.p}:{salt}:{digest}"


@dataclass(frozen=True)
class StatusPageConfig:
    """`status_page:`: the listener, and the password every viewer must give (None: loopback
    only, no password)."""

    listen: tuple[str, int]
    user: str = DEFAULT_USER
    password: PasswordHash | None = field(default=None, repr=False)
    refresh_seconds: float = DEFAULT_REFRESH

    @property
    def url(self) -> str:
        host, port = self.listen
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def parse_listen(value: object) -> tuple[str, int] | None:
    """`127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`, `0.0.0.0:8081`; None if not that form."""
    host, sep, port = str(value).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        return None
    return host, int(port)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower() == "localhost"
    return True


def parse_status_page(report: Report, node: MarkedDict) -> StatusPageConfig | None:
    report.keys(node, "status_page", KEYS, ("listen",))
    user = report.string(node, "user", "status_page.user")
    if user is not None and (not user or ":" in user or not user.isprintable()):
        report.error(node.value_mark("user"), "status_page.user must be a name without ':'")
        user = None
    refresh = report.number(node, "refresh_seconds", "status_page.refresh_seconds")
    if refresh is not None and not 2 <= refresh <= 3600:
        at = node.value_mark("refresh_seconds")
        report.error(at, "status_page.refresh_seconds must be from 2 to 3600")
        refresh = None
    password = _password(report, node)
    listen = _listen(report, node, has_password="password_hash" in node)
    if listen is None:
        return None
    return StatusPageConfig(
        listen=listen,
        user=user or DEFAULT_USER,
        password=password,
        refresh_seconds=DEFAULT_REFRESH if refresh is None else float(refresh),
    )


def _password(report: Report, node: MarkedDict) -> PasswordHash | None:
    text = report.string(node, "password_hash", "status_page.password_hash")
    if text is None:
        return None  # absent, or a ${credential:…} only the service can read (a warning)
    parsed = PasswordHash.parse(text)
    if parsed is None:
        report.error(
            node.value_mark("password_hash"), f"status_page.password_hash: use {HASH_FORM}"
        )
    return parsed


def _listen(report: Report, node: MarkedDict, has_password: bool) -> tuple[str, int] | None:
    if "listen" not in node:
        return None
    at = node.value_mark("listen")
    listen = parse_listen(node["listen"])
    if listen is None or not _is_address(listen[0]):
        report.error(at, "status_page.listen must be ADDRESS:PORT, e.g. 127.0.0.1:8081")
        return None
    if not loopback(listen[0]) and not has_password:
        report.error(
            at,
            "status_page.listen is not a loopback address: the page shows patient folders and "
            "file names, so set status_page.password_hash (see `ingestd hash-password`) or "
            "listen on 127.0.0.1",
        )
        return None
    return listen
