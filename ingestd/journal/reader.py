"""A read-only view of the journal for another thread (the status page): a connection of its own,
opened `mode=ro`, so a page being read never waits behind, nor holds up, the daemon's own
reader and writer (WAL readers never block)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ingestd.journal.rows import ACTIVE_STATES, COLUMNS, Row, from_db


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
        return [
            Row(**{name: from_db(name, value) for name, value in zip(COLUMNS, record, strict=True)})
            for record in found
        ]

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
