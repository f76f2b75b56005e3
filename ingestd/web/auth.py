"""Who may see the status page: HTTP Basic against an scrypt hash, a lockout per client address,
and the CSRF token that a Retry form must carry.

A page without a password (allowed on loopback only) answers only requests whose `Host` is a
loopback name or address: otherwise a web page the server's own browser opens could rename its
site to 127.0.0.1 (DNS rebinding) and read the page as its own (`loopback_host`).

Everything secret is compared with `hmac.compare_digest`. A password, once checked, is
remembered by a keyed digest of its header for a few minutes, so a page refreshing every few
seconds does not cost an scrypt each time (and nobody can read the password back from memory
any more easily than from the request). Failures are counted per client address: five in five
minutes lock that address out for five minutes (429). A check under way counts against that
limit before it hashes, and only `HASHING_AT_ONCE` scrypt checks (32 MiB each) run at once, so a
burst of wrong logins costs a few hashes, not memory per request. Nothing here logs the name
tried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ingestd.config.statuspage import PasswordHash

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # 32 MiB and ~0.1 s per check
MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
LOCKOUT_SECONDS = 300.0
REMEMBER_SECONDS = 600.0
_REMEMBERED_MAX = 256
_FAILURES_MAX = 1024  # client addresses with failures remembered; the oldest go first
HASHING_AT_ONCE = 2  # scrypt checks running at once (32 MiB each)


def hash_password(password: str, n: int = SCRYPT_N) -> PasswordHash:
    salt = secrets.token_bytes(16)
    return PasswordHash(n, SCRYPT_R, SCRYPT_P, salt, _scrypt(password, n, SCRYPT_R, SCRYPT_P, salt))


def check_password(stored: PasswordHash, password: str) -> bool:
    found = _scrypt(password, stored.n, stored.r, stored.p, stored.salt, len(stored.digest))
    return hmac.compare_digest(found, stored.digest)


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, length: int = 32) -> bytes:
    data = password.encode("utf-8", "surrogateescape")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=160 * n * r, dklen=length)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic …` header (RFC 7617, UTF-8)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    locked_for: float = 0.0  # seconds left of a lockout (then 429, not 401)
    failed: bool = False  # a wrong password was given (logged by the caller, without the name)


@dataclass
class Gate:
    """Decides each request; safe from any thread. `password` None: no password needed (the
    page listens on loopback only)."""

    user: str
    password: PasswordHash | None
    clock: Callable[[], float] = time.monotonic
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _failures: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _locked: dict[str, float] = field(default_factory=dict, repr=False)
    _remembered: dict[bytes, float] = field(default_factory=dict, repr=False)
    _pending: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _hashing: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(HASHING_AT_ONCE), repr=False
    )

    def use(self, user: str, password: PasswordHash | None) -> None:
        """Check against these from now on (a reloaded config); forget passwords seen."""
        with self._lock:
            if (user, password) != (self.user, self.password):
                self.user, self.password = user, password
                self._remembered.clear()

    def check(self, client: str, authorization: str | None) -> Verdict:
        if self.password is None:
            return Verdict(True)
        now = self.clock()
        with self._lock:
            until = self._locked.get(client, 0.0)
            if until > now:
                return Verdict(False, locked_for=until - now)
            self._locked.pop(client, None)
            seen = self._digest(authorization or "")
            if self._remembered.get(seen, 0.0) > now:
                return Verdict(True)
        given = basic_credentials(authorization)
        if given is None:
            return Verdict(False)  # no credentials yet: the browser asks; not a failure
        with self._lock:
            # Counted as pending before hashing: a client with MAX_FAILURES checks pending or
            # failed is refused without another scrypt (no pile of 32 MiB hashes at once).
            pending = self._pending.get(client, 0)
            failed = self._recent_failures(client, now)
            if pending + failed >= MAX_FAILURES:
                return Verdict(False, locked_for=LOCKOUT_SECONDS)
            self._pending[client] = pending + 1
        try:
            with self._hashing:
                matches = self._matches(*given)
        finally:
            with self._lock:
                left = self._pending.get(client, 1) - 1
                if left > 0:
                    self._pending[client] = left
                else:
                    self._pending.pop(client, None)
        if matches:
            with self._lock:
                if len(self._remembered) >= _REMEMBERED_MAX:
                    self._remembered.clear()
                self._remembered[seen] = now + REMEMBER_SECONDS
            return Verdict(True)
        return self._failure(client, now)

    def _recent_failures(self, client: str, now: float) -> int:
        """Failures of `client` within the window (under the lock; drops the expired)."""
        times = self._failures.get(client)
        if times is None:
            return 0
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._failures[client]
        return len(times)

    def _matches(self, user: str, password: str) -> bool:
        assert self.password is not None
        same_user = hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8"))
        same_password = check_password(self.password, password)  # always paid: no user oracle
        return same_user and same_password

    def _failure(self, client: str, now: float) -> Verdict:
        with self._lock:
            if client not in self._failures and len(self._failures) >= _FAILURES_MAX:
                self._forget_failures(now)
            times = self._failures.setdefault(client, deque())
            times.append(now)
            while times and times[0] <= now - FAILURE_WINDOW:
                times.popleft()
            if len(times) >= MAX_FAILURES:
                del self._failures[client]
                self._locked[client] = now + LOCKOUT_SECONDS
                return Verdict(False, locked_for=LOCKOUT_SECONDS, failed=True)
        return Verdict(False, failed=True)

    def _forget_failures(self, now: float) -> None:
        """Make room in `_failures` (under the lock): the expired first, then the oldest."""
        for client in [
            c for c, t in self._failures.items() if not t or t[-1] <= now - FAILURE_WINDOW
        ]:
            del self._failures[client]
        while len(self._failures) >= _FAILURES_MAX:
            oldest = min(self._failures, key=lambda c: self._failures[c][-1])
            del self._failures[oldest]
        for client in [c for c, until in self._locked.items() if until <= now]:
            del self._locked[client]

    def _digest(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode("utf-8", "surrogateescape"), "sha256").digest()


@dataclass(frozen=True)
class Csrf:
    """A token per session: HMAC of the session id under a key that lives as long as the
    process (a restart asks for a reload of the page, nothing more)."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def token(self, session: str) -> str:
        return hmac.new(self.key, session.encode("ascii", "replace"), "sha256").hexdigest()

    def valid(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.token(session).encode(), token.encode("utf-8", "replace"))


def new_session() -> str:
    return secrets.token_urlsafe(32)


def loopback_host(header: str | None) -> bool:
    """Whether a `Host` header names this machine by a loopback name or address (no header:
    an HTTP/1.0 client, which no browser is)."""
    if header is None:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
