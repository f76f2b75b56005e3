"""The shared journal's connection to PostgreSQL: settings, connecting, and what an outage does.

psycopg (3) is optional: imported only when a `journal: {url: …}` is configured. A few libpq
connections in autocommit mode (each statement its own transaction), each used by one thread
at a time, reopened after the server went away. During an outage a call either waits for the
database (`wait=True`: the writes that record what was done, which must not be lost) or fails
at once with `JournalUnavailable` (new claims and the loop's reads: nothing new starts).
Reconnects are tried at most every RECONNECT_EVERY seconds, so a full inbox does not hammer a
database that is down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ingestd.journal.interface import JournalUnavailable
from ingestd.journal.schema import JournalError

log = logging.getLogger("ingestd.journal")

RECONNECT_EVERY = 0.5
CONNECTIONS = 4  # per instance: 25 instances fit PostgreSQL's default max_connections (100)
# libpq options set unless the URL sets them: give up on an unreachable server quickly, and
# notice a peer that vanished (a host gone from the network) through TCP keepalives.
_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    # Keepalives are not sent while a request waits for its acknowledgement: this bounds that.
    "tcp_user_timeout": "15000",
    "application_name": "ingestd",
}


# Words of libpq's messages that a restart cannot fix (wrong password, role, database, TLS or
# pg_hba.conf): the config is wrong. Anything else (refused, timed out, starting up) is a server
# not reachable yet, which a restart of the service a few seconds later may find.
_REFUSALS = ("authentication", "password", "pg_hba.conf", "does not exist", "invalid",
             "permission denied", "certificate", "role")  # fmt: skip
# Not "ssl": "SSL SYSCALL error: EOF detected" is a connection cut short, which a retry may fix.


class JournalUnreachable(JournalError):
    """The shared journal's server cannot be reached at start-up (try again later)."""


class JournalRefused(JournalError):
    """The database answered and refused one statement (say, a value longer than an index
    takes): not an outage, so nothing waits for it and the connection is kept."""


def connection_lost(exc: BaseException) -> bool:
    """Whether a psycopg OperationalError means the connection or server went away (libpq's
    own errors have no SQLSTATE; 08: connection exceptions; 57P01-03: shut down or starting;
    57014: a statement cancelled, tried again) rather than a refused statement."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03", "57014")


@dataclass(frozen=True)
class SharedJournal:
    """`journal:` in the config: a libpq URL (TLS options as its query, e.g. ?sslmode=verify-full)
    and the password, resolved from its secret reference (None: from the URL's own means)."""

    url: str
    password: str | None = field(default=None, repr=False)


def driver() -> Any:
    """The psycopg module, or a JournalError saying how to get it."""
    try:
        import psycopg
    except ImportError:
        raise JournalError(
            "a PostgreSQL journal needs psycopg 3: apt install python3-psycopg "
            "(or pip install 'ingestd[postgresql]')"
        ) from None
    return psycopg


def describe(url: str) -> str:
    """`user@host:port/db` for messages: never a password, whatever the URL holds."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - any parse error: say only that it is the URL
        return "the journal URL"
    host = parts.get("host") or "localhost"
    where = f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"
    return f"{parts['user']}@{where}" if parts.get("user") else where


def reason(exc: BaseException) -> str:
    """libpq's message, first line: names the server and the failure, never a password."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class _Slot:
    """One connection and the lock of the thread using it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Any = None
    # One cursor per connection, reused: a new one per statement is Python work, and with the
    # pure-Python driver every libpq call it makes is a chance for another thread to take the GIL
    # (measured: 286 → 196 µs of CPU per statement with 8 threads busy).
    cursor: Any = None
    epoch: int = 0  # the link's epoch when it connected


class Link:
    """A few connections (CONNECTIONS), reopened as needed; thread-safe. Workers each take a free
    one: a round trip to the server is a wait, and one connection would make every worker
    queue behind it."""

    def __init__(self, settings: SharedJournal, connections: int = CONNECTIONS) -> None:
        self._psycopg = driver()
        self._settings = settings
        self.where = describe(settings.url)
        self._slots = [_Slot() for _ in range(connections)]
        self._state = threading.Lock()
        self._down_since: float | None = None
        self._up_since = time.monotonic()
        self._next_try = 0.0
        # Counts connection losses: a slot that connected before the last one reconnects before
        # its next use (a restarted server broke every connection, not only the one that saw it).
        self._epoch = 0
        self._lost = (self._psycopg.OperationalError, self._psycopg.InterfaceError)
        try:
            self._connect(self._slots[0])
        except self._lost as exc:
            why = reason(exc)
            unreachable = not any(word in why.lower() for word in _REFUSALS)
            error = JournalUnreachable if unreachable else JournalError
            raise error(f"cannot open journal {self.where}: {why}") from None

    def _connect(self, slot: _Slot) -> Any:
        if slot.conn is not None and slot.epoch != self._epoch:
            with contextlib.suppress(Exception):  # most likely broken by the same loss
                slot.conn.close()
            slot.conn = None
        if slot.conn is None or slot.conn.closed:
            slot.epoch = self._epoch
            given = self._psycopg.conninfo.conninfo_to_dict(self._settings.url)
            extra = {k: v for k, v in _DEFAULTS.items() if k not in given}
            if self._settings.password is not None:
                extra["password"] = self._settings.password
            slot.conn = self._psycopg.connect(self._settings.url, autocommit=True, **extra)
            slot.cursor = slot.conn.cursor()
        return slot.conn

    def up_for(self) -> float:
        """Seconds the database has answered without a break (0 while it does not)."""
        with self._state:
            return 0.0 if self._down_since is not None else time.monotonic() - self._up_since

    def run(self, sql: str, params: Any = (), *, wait: bool) -> tuple[list[Any], int]:
        """One statement: its rows and rowcount. `wait`: through an outage, until it is done."""
        while True:
            try:
                return self._attempt(sql, params)
            except JournalUnavailable:
                if not wait:
                    raise
            time.sleep(RECONNECT_EVERY)

    @contextmanager
    def _slot(self) -> Iterator[_Slot]:
        """A free connection slot, else this thread's own one to wait for; refused while the
        database is known to be down and the next try is not due."""
        with self._state:
            if self._down_since is not None and time.monotonic() < self._next_try:
                raise JournalUnavailable(self.where)
        slot = next((s for s in self._slots if s.lock.acquire(blocking=False)), None)
        if slot is None:
            slot = self._slots[threading.get_ident() % len(self._slots)]
            slot.lock.acquire()
        try:
            yield slot
        finally:
            slot.lock.release()

    def _attempt(self, sql: str, params: Any) -> tuple[list[Any], int]:
        with self._slot() as slot:
            try:
                self._connect(slot)
                cursor = slot.cursor.execute(sql, params)
                found = cursor.fetchall() if cursor.description else []
                # Read while the slot is ours: the cursor is the slot's, and the next statement
                # on it resets the count (a lost claim's 0 must not read as another's 1).
                count = cursor.rowcount
            except self._lost as exc:
                self._lost_or_refused(slot, exc)
        self._came_back()
        return found, count

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A transaction of several statements on one connection (fails fast in an outage)."""
        with self._slot() as slot:
            try:
                conn = self._connect(slot)
                with conn.transaction():
                    yield conn
            except self._lost as exc:
                self._lost_or_refused(slot, exc)
        self._came_back()

    def _lost_or_refused(self, slot: _Slot, exc: BaseException) -> None:
        """Raise JournalUnavailable for a lost connection (and note the outage), else
        JournalRefused naming only the SQLSTATE (the server's text may quote the values)."""
        if connection_lost(exc):
            self._went_down(slot, exc)
            raise JournalUnavailable(self.where) from None
        state = getattr(exc, "sqlstate", None)
        raise JournalRefused(
            f"journal {self.where} refused a statement (SQLSTATE {state}, {type(exc).__name__})"
        ) from None

    def _went_down(self, slot: _Slot, exc: BaseException) -> None:
        if slot.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                slot.conn.close()
            slot.conn = None
            slot.cursor = None
        with self._state:
            self._next_try = time.monotonic() + RECONNECT_EVERY
            self._epoch += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "event=journal_unavailable database=%s reason=%r action=%s",
            self.where,
            reason(exc),
            "nothing new is claimed; outcomes are kept until the database answers",
        )

    def _came_back(self) -> None:
        if self._down_since is not None:  # nearly always None: no lock taken per statement
            self._note_back()

    def _note_back(self) -> None:
        with self._state:
            if self._down_since is None:  # another thread noted it first
                return
            down = time.monotonic() - self._down_since
            self._down_since = None
            self._up_since = time.monotonic()
        log.warning("event=journal_back database=%s down_seconds=%.1f", self.where, down)

    def close(self) -> None:
        for slot in self._slots:
            with slot.lock:
                if slot.conn is not None:
                    slot.conn.close()
                    slot.conn = slot.cursor = None
