"""A read-only view of the journal for another thread (the status page): a connection of its own,
opened `mode=ro`, so a page being read never waits behind, nor holds up, the daemon's own
reader and writer (WAL readers never block)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from ingestd.journal.rows import ACTIVE_STATES, COLUMNS, Row, row_from_db


class JournalView(Protocol):
    """What the status page reads: this module's reader of the SQLite file, or the shared
    journal itself (`SharedJournalView`)."""

    def active(self) -> list[Row]: ...

    def finished_since(self, state: str, since: str, limit: int) -> list[Row]: ...

    def close(self) -> None: ...


class SharedJournalView:
    """The shared journal read by the page: the whole fleet's rows, through the daemon's own
    connections (thread-safe); in an outage it fails at once rather than hold the page."""

    def __init__(self, journal: Any) -> None:
        self._journal = journal  # a PostgresJournal (imported lazily: psycopg is optional)

    def active(self) -> list[Row]:
        rows: list[Row] = self._journal.active_now()
        return rows

    def finished_since(self, state: str, since: str, limit: int) -> list[Row]:
        rows: list[Row] = self._journal.finished_since(state, since, limit)
        return rows

    def close(self) -> None:
        """The daemon closes its journal itself."""


class JournalReader:
    """Reads only; safe from any thread (one lock around its one connection)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(
            f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5, check_same_thread=False
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, where: str, params: tuple[Any, ...]) -> list[Row]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM files WHERE {where}"  # noqa: S608
        with self._lock:
            found = self._db.execute(sql, params).fetchall()
        return [row_from_db(COLUMNS, record) for record in found]

    def active(self) -> list[Row]:
        """Every unfinished row, oldest first."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        return self._rows(f"state IN ({marks}) ORDER BY id", ACTIVE_STATES)

    def finished_since(self, state: str, since: str, limit: int) -> list[Row]:
        """Rows that reached `state` (done | failed) at or after `since` (ISO 8601 UTC with a Z,
        as the journal writes it), newest first."""
        return self._rows(
            "state = ? AND finished_at >= ? ORDER BY finished_at DESC LIMIT ?",
            (state, since, limit),
        )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state"))
