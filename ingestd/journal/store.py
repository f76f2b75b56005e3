"""The journal's store: SQLite in WAL mode, one statement per write on a writer connection, reads
on a second connection, the schema migrated on open."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd.journal.rows import (
    ACTIVE_STATES,
    COLUMNS,
    Row,
    new_row,
    row_from_db,
    to_db,
)
from ingestd.journal.schema import MIGRATIONS, SCHEMA, JournalError, migrate
from ingestd.journal.staging import Staged


class Journal:
    """Thread-safe access to the journal file; every method is one committed transaction.

    Writers share one connection under one lock. A single statement in autocommit mode is its
    own transaction, so most writes are one call under the lock: with a dozen workers, each
    extra call made while holding it (BEGIN, COMMIT, a re-read) is another wait for the GIL
    that every other worker queues behind.
    """

    shared = False  # one instance's file: claims are settled by the rename alone

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._staged = Staged()
        try:
            # isolation_level=None: autocommit; multi-statement transactions say BEGIN IMMEDIATE.
            self._db = sqlite3.connect(
                str(path), timeout=30, isolation_level=None, check_same_thread=False
            )
            os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; what a power cut could lose is
            # covered by asking the EHR before re-sending anything resumed (see pipeline).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            # Reads on a connection of their own: in WAL mode they see every committed write
            # and never wait for one in progress.
            self._reader = sqlite3.connect(
                str(path), timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            found = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
                version = 1
            else:
                version = int(found[0])
            migrate(db, version, MIGRATIONS, str(self.path), "?")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    # --- writing ----------------------------------------------------------------------------

    def _write(self, sql: str, params: Any) -> sqlite3.Cursor:
        """One statement, committed on its own (autocommit)."""
        with self._lock:
            return self._db.execute(sql, params)

    def add(
        self,
        source: PurePosixPath,
        work: PurePosixPath,
        received_at: str,
        identity: str | None = None,
        **values: Any,
    ) -> Row:
        """Record the intent to claim `source` into `work` (state `claiming`). `identity` serves
        a shared journal's claim lock; here the rename alone decides."""
        columns = {"source": source, "work": work, "state": "claiming", "received_at": received_at}
        columns.update(values)
        names = [*list(columns), "updated_at"]
        params = [to_db(name, columns[name]) for name in columns] + [time.time()]
        cursor = self._write(
            f"INSERT INTO files ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",  # noqa: S608
            params,
        )
        return new_row(int(cursor.lastrowid or 0), columns)

    def update(self, row_id: int, **values: Any) -> None:
        """Set columns of one row (and what is staged for it) in one transaction."""
        self._update(row_id, self._staged.take(row_id, values))

    def _update(self, row_id: int, values: dict[str, Any]) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown journal columns: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        params = [to_db(name, value) for name, value in values.items()]
        self._write(
            f"UPDATE files SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608
            [*params, time.time(), row_id],
        )

    def change(self, row: Row, **values: Any) -> Row:
        """`update` a row the caller holds and return it as it now is, without reading it back."""
        values = self._staged.take(row.id, values)
        self._update(row.id, values)
        return dataclasses.replace(row, **values)

    def finished(self, row_id: int, state: str) -> None:
        """Record a row done or failed (a local write is cheap: at once)."""
        self.update(row_id, state=state)

    def stage(self, row: Row, **values: Any) -> Row:
        """Values written with the row's next write, not before (see staging.py)."""
        return self._staged.hold(row, values)

    def make_due(self) -> None:
        """Every waiting row is due now (after a reload that may have fixed what held it)."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        self._write(
            f"UPDATE files SET next_attempt_at = 0 WHERE state IN ({marks})",  # noqa: S608
            ACTIVE_STATES,
        )

    def delete(self, row_id: int) -> None:
        self._staged.drop(row_id)
        self._write("DELETE FROM files WHERE id = ?", (row_id,))

    def mark_verified(self, target: str, document_id: str, sha256: str, at: str) -> None:
        """The EHR holds this document with this content (`ingestd verify`), as of `at`."""
        self._write(
            "INSERT OR REPLACE INTO verified (target, document_id, sha256, verified_at) "
            "VALUES (?, ?, ?, ?)",
            (target, document_id, sha256, at),
        )

    def forget_verified(self, target: str, document_id: str, sha256: str) -> None:
        """A re-check found it missing or different: the next run checks it again."""
        self._write(
            "DELETE FROM verified WHERE target = ? AND document_id = ? AND sha256 = ?",
            (target, document_id, sha256),
        )

    # --- reading ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[Row]:
        found = self._read(
            f"SELECT {', '.join(COLUMNS)} FROM files WHERE {where}",  # noqa: S608
            params,
        )
        return [row_from_db(COLUMNS, record) for record in found]

    def get(self, row_id: int) -> Row | None:
        rows = self._select("id = ?", (row_id,))
        return self._staged.over(rows[0]) if rows else None

    def active(self) -> list[Row]:
        """Every row not yet done or failed, oldest first."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        return self._select(f"state IN ({marks}) ORDER BY id", ACTIVE_STATES)

    def held(self, wait: bool = True) -> list[Row]:
        """The active rows this instance holds: all of them, in a journal of its own."""
        return self.active()

    def due(self, now: float, exclude: set[int]) -> list[Row]:
        """Active rows whose next attempt is due, oldest first, leaving out those in hand."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        rows = self._select(
            f"state IN ({marks}) AND next_attempt_at <= ? ORDER BY next_attempt_at, id",
            (*ACTIVE_STATES, now),
        )
        return [row for row in rows if row.id not in exclude]

    def next_due_time(self, exclude: set[int]) -> float | None:
        """When the earliest active row not in hand becomes due."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        found = self._read(
            f"SELECT id, next_attempt_at FROM files WHERE state IN ({marks}) "  # noqa: S608
            "ORDER BY next_attempt_at LIMIT ?",
            (*ACTIVE_STATES, len(exclude) + 1),
        )
        times = [when for row_id, when in found if row_id not in exclude]
        return min(times) if times else None

    def by_source(self, source: PurePosixPath) -> list[Row]:
        return self._select("source = ? ORDER BY id", (os.fsencode(str(source)),))

    def name_holders(self, row_id: int, state: str, dest: PurePosixPath) -> list[Row]:
        where = "state = ? AND dest = ? AND id <> ?"  # by files_by_state: few rows
        return self._select(where, (state, os.fsencode(str(dest)), row_id))

    def keep_for_retry(
        self, source: PurePosixPath, sha256: str, receipts: list[Any], wait: bool = True
    ) -> None:
        """Remember the receipts of a file put back by `ingestd retry` until it is claimed.
        (`wait` is the shared journal's: a local file has no outage to wait through.)"""
        self._write(
            "INSERT OR REPLACE INTO retried (source, sha256, receipts) VALUES (?, ?, ?)",
            (os.fsencode(str(source)), sha256, json.dumps(receipts, ensure_ascii=True)),
        )

    def take_retried(self, source: PurePosixPath, sha256: str) -> list[dict[str, Any]] | None:
        """The earlier receipts of this very file (same path and content), once."""
        key = (os.fsencode(str(source)), sha256)
        if not self._read("SELECT 1 FROM retried WHERE source = ? AND sha256 = ?", key):
            return None  # nearly always: checked without waiting for the writers
        with self._lock:
            # fetchall: the statement (and so its transaction) ends only when it has been read.
            found = self._db.execute(
                "DELETE FROM retried WHERE source = ? AND sha256 = ? RETURNING receipts", key
            ).fetchall()
        if not found:
            return None
        loaded = json.loads(found[0][0])
        return loaded if isinstance(loaded, list) else None

    def verified_at(self, target: str, document_id: str, sha256: str) -> str | None:
        """When `ingestd verify` last saw the EHR hold this document with this content."""
        found = self._read(
            "SELECT verified_at FROM verified WHERE target = ? AND document_id = ? AND sha256 = ?",
            (target, document_id, sha256),
        )
        return str(found[0][0]) if found else None

    def oldest_active(self) -> float | None:
        """When the oldest unfinished row was received (epoch seconds)."""
        marks = ", ".join("?" * len(ACTIVE_STATES))
        found = self._read(
            f"SELECT MIN(received_at) FROM files WHERE state IN ({marks})",  # noqa: S608
            ACTIVE_STATES,
        )
        if not found or not found[0][0]:
            return None
        return datetime.fromisoformat(str(found[0][0]).replace("Z", "+00:00")).timestamp()

    def counts(self) -> dict[str, int]:
        found = self._read("SELECT state, COUNT(*) FROM files GROUP BY state")
        return dict(found)

    def recent(self, state: str, limit: int = 10) -> list[Row]:
        return self._select("state = ? ORDER BY finished_at DESC, id DESC LIMIT ?", (state, limit))

    # --- a fleet (nothing to do for a journal of one instance) ------------------------------

    def heartbeat(self) -> None:
        """Only a shared journal knows other instances: leases are files here (inbox/claims)."""

    def live_instances(self, lease_seconds: float) -> tuple[str, ...]:
        return ()

    def take_over(self, lease_seconds: float) -> list[Row]:
        return []

    def leave(self) -> None:
        """Nothing registered: nothing to leave."""
