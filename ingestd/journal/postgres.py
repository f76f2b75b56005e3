"""The shared journal: the same rows in PostgreSQL, for a fleet of instances on one inbox.

Every row names the instance that holds it (`holder`); an instance works only on its own rows,
and every write it makes is conditional on still holding the row (a survivor may have taken it
over while this instance was thought dead: the write raises ClaimLost instead). A claim is the
row inserted before the rename, unique per (source, identity) among active rows: of several
instances that see the same file, one inserts it; the rename still has the final say.
Liveness (heartbeats, takeover) lives in journal/fleet.py and uses the database's clock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from ingestd.journal.finishing import FinishedRows
from ingestd.journal.fleet import Roster
from ingestd.journal.interface import AlreadyClaimed, ClaimLost, JournalUnavailable
from ingestd.journal.pglink import JournalUnreachable, Link, SharedJournal
from ingestd.journal.rows import ACTIVE_STATES, COLUMNS, Row, new_row, row_from_db, to_db
from ingestd.journal.schema import PG_FIRST_VERSION, PG_MIGRATIONS, PG_SCHEMA, migrate
from ingestd.journal.staging import Staged

_SELECTED = (*COLUMNS, "holder")
_ACTIVE = list(ACTIVE_STATES)
_MIGRATION_LOCK = 0x1A6E57D  # the advisory lock instances starting together migrate under


class PostgresJournal(Roster):
    """`JournalLike` on PostgreSQL. `instance` None: a command's view of the whole fleet."""

    shared = True

    def __init__(self, settings: SharedJournal, instance: str | None = None) -> None:
        self.link = Link(settings)
        self.instance = instance
        try:
            self._migrate()
            if instance is not None:
                self.heartbeat(wait=True)
        except JournalUnavailable as exc:
            self.link.close()
            # A connection lost while opening: a server restarting, worth a try later (exit 1).
            raise JournalUnreachable(
                f"cannot open journal {exc}: the database stopped answering"
            ) from None
        except Exception:
            self.link.close()
            raise
        self._staged = Staged()
        self._finished = FinishedRows(self._write_finished)
        self._counts: dict[str, int] = {}
        self._oldest: float | None = None

    def _migrate(self) -> None:
        with self.link.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            for statement in PG_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = PG_FIRST_VERSION if found is None else int(found[0])
            if found is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', %s)", (str(version),))
            migrate(db, version, PG_MIGRATIONS, self.link.where, "%s")

    def close(self) -> None:
        self._finished.close()
        self.link.close()

    # --- writing ----------------------------------------------------------------------------

    def _mine(self) -> tuple[str, tuple[Any, ...]]:
        """The condition that a row is this instance's (none for a command)."""
        return ("AND holder = %s", (self.instance,)) if self.instance is not None else ("", ())

    def add(
        self,
        source: PurePosixPath,
        work: PurePosixPath,
        received_at: str,
        identity: str | None = None,
        **values: Any,
    ) -> Row:
        """The claim: a `claiming` row, unless another instance claims the same file. Fails at
        once when the database is down (the file waits in the inbox)."""
        columns = {"source": source, "work": work, "state": "claiming", "received_at": received_at}
        columns.update(values)
        names = [*columns, "updated_at", "holder", "identity"]
        params = [to_db(n, columns[n]) for n in columns] + [time.time(), self.instance, identity]
        # The claim re-registers this instance in the same statement: an instance taken for
        # dead (cut off past its lease) and back must not claim rows nobody is known to hold,
        # which a survivor's take_over would take while this one sends them.
        register = (
            "WITH alive AS (INSERT INTO instances (id, host, pid) VALUES (%s, %s, %s) "
            # Rewritten only when a second old: a row version per claim is the server's work.
            "ON CONFLICT (id) DO UPDATE SET seen_at = now() "
            "WHERE instances.seen_at < now() - interval '1 second') "
        )
        insert = (
            f"INSERT INTO files ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "  # noqa: S608
            "ON CONFLICT DO NOTHING "
            # `ingestd retry` keeps receipts before it puts a file back, so a claim that finds
            # none for this source spares the pipeline a look (a statement) later.
            "RETURNING id, EXISTS (SELECT 1 FROM retried WHERE source = %s)"
        )
        params.append(to_db("source", source))
        if self.instance is not None:
            insert = register + insert
            params = [self.instance, socket.gethostname(), os.getpid(), *params]
        found, _ = self.link.run(insert, params, wait=False)
        if not found:
            raise AlreadyClaimed  # no path in the message: it would be a patient's
        row_id, retried = found[0]
        return new_row(int(row_id), {**columns, "holder": self.instance, "retried": bool(retried)})

    def update(self, row_id: int, **values: Any) -> None:
        """Set columns of a row this instance holds (and what is staged for it); waits out an
        outage (nothing is lost)."""
        self._update(row_id, self._staged.take(row_id, values))

    def _update(self, row_id: int, values: dict[str, Any]) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown journal columns: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = %s" for name in values)
        mine, held = self._mine()
        params = [to_db(name, value) for name, value in values.items()]
        _, count = self.link.run(
            f"UPDATE files SET {assignments}, updated_at = %s WHERE id = %s {mine}",  # noqa: S608
            [*params, time.time(), row_id, *held],
            wait=True,
        )
        if count == 0 and self.instance is not None:
            raise ClaimLost(str(row_id))

    def change(self, row: Row, **values: Any) -> Row:
        values = self._staged.take(row.id, values)
        self._update(row.id, values)
        return dataclasses.replace(row, **values)

    def finished(self, row_id: int, state: str) -> None:
        """Record a row done or failed with others in one statement (journal/finishing.py);
        until then this journal reads it as finished, the database as it was."""
        staged = self._staged.take(row_id, {})
        if staged:
            self._update(row_id, {**staged, "state": state})
            return
        self._finished.add(row_id, state)

    def _write_finished(self, batch: dict[int, str]) -> None:
        mine, held = self._mine()
        self.link.run(
            "UPDATE files SET state = v.state, updated_at = %s "  # noqa: S608
            "FROM unnest(%s::bigint[], %s::text[]) AS v(id, state) "
            f"WHERE files.id = v.id {mine}",
            (time.time(), list(batch), list(batch.values()), *held),
            wait=False,
        )

    def stage(self, row: Row, **values: Any) -> Row:
        """Values written with the row's next write, not before (see staging.py)."""
        return self._staged.hold(row, values)

    def make_due(self) -> None:
        """Every held row due now. Skipped in an outage (the rows stay due when they were):
        a reload or a target coming back must not hold the loop until the database returns."""
        mine, held = self._mine()
        try:
            self.link.run(
                f"UPDATE files SET next_attempt_at = 0 WHERE state = ANY(%s) {mine}",  # noqa: S608
                (_ACTIVE, *held),
                wait=False,
            )
        except JournalUnavailable:
            return

    def delete(self, row_id: int) -> None:
        self._staged.drop(row_id)
        mine, held = self._mine()
        self.link.run(f"DELETE FROM files WHERE id = %s {mine}", (row_id, *held), wait=True)  # noqa: S608

    def mark_verified(self, target: str, document_id: str, sha256: str, at: str) -> None:
        self.link.run(
            "INSERT INTO verified (target, document_id, sha256, verified_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (target, document_id, sha256) "
            "DO UPDATE SET verified_at = EXCLUDED.verified_at",
            (target, document_id, sha256, at),
            wait=True,
        )

    def forget_verified(self, target: str, document_id: str, sha256: str) -> None:
        self.link.run(
            "DELETE FROM verified WHERE target = %s AND document_id = %s AND sha256 = %s",
            (target, document_id, sha256),
            wait=True,
        )

    def keep_for_retry(
        self, source: PurePosixPath, sha256: str, receipts: list[Any], wait: bool = True
    ) -> None:
        """`wait` False: JournalUnavailable at once in an outage (the status page's Retry)."""
        self.link.run(
            "INSERT INTO retried (source, sha256, receipts) VALUES (%s, %s, %s) "
            "ON CONFLICT (source, sha256) DO UPDATE SET receipts = EXCLUDED.receipts",
            (os.fsencode(str(source)), sha256, json.dumps(receipts, ensure_ascii=True)),
            wait=wait,
        )

    def take_retried(self, source: PurePosixPath, sha256: str) -> list[dict[str, Any]] | None:
        found, _ = self.link.run(
            "DELETE FROM retried WHERE source = %s AND sha256 = %s RETURNING receipts",
            (os.fsencode(str(source)), sha256),
            wait=True,
        )
        if not found:
            return None
        loaded = json.loads(found[0][0])
        return loaded if isinstance(loaded, list) else None

    # --- reading ----------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...] = (), wait: bool = True) -> list[Row]:
        found, _ = self.link.run(
            f"SELECT {', '.join(_SELECTED)} FROM files WHERE {where}",  # noqa: S608
            params,
            wait=wait,
        )
        return [row_from_db(_SELECTED, record) for record in found]

    def get(self, row_id: int) -> Row | None:
        state = self._finished.state_of(row_id)  # before the read: a batch may land meanwhile
        rows = self._select("id = %s", (row_id,))
        if not rows:
            return None
        row = rows[0] if state is None else dataclasses.replace(rows[0], state=state)
        return self._staged.over(row)

    def active(self) -> list[Row]:
        """Every active row of the whole fleet, oldest first."""
        return self._select("state = ANY(%s) ORDER BY id", (_ACTIVE,))

    def active_now(self) -> list[Row]:
        """`active`, but failing at once (`JournalUnavailable`) in an outage: for the page."""
        return self._select("state = ANY(%s) ORDER BY id", (_ACTIVE,), wait=False)

    def finished_since(self, state: str, since: str, limit: int) -> list[Row]:
        """As `JournalReader.finished_since`, for the whole fleet; fails at once in an outage."""
        return self._select(
            "state = %s AND finished_at >= %s ORDER BY finished_at DESC LIMIT %s",
            (state, since, limit),
            wait=False,
        )

    def held(self, wait: bool = True) -> list[Row]:
        """The active rows this instance holds (`wait`: through an outage)."""
        finished = self._finished.ids()  # before the read: a batch may land meanwhile
        mine, held = self._mine()
        rows = self._select(f"state = ANY(%s) {mine} ORDER BY id", (_ACTIVE, *held), wait=wait)
        return [row for row in rows if row.id not in finished]

    def due(self, now: float, exclude: set[int]) -> list[Row]:
        """This instance's due rows; none while the database is down (the loop goes on)."""
        exclude = exclude | self._finished.ids()
        mine, held = self._mine()
        try:
            rows = self._select(
                f"state = ANY(%s) AND next_attempt_at <= %s {mine} "
                "ORDER BY next_attempt_at, id LIMIT %s",
                (_ACTIVE, now, *held, len(exclude) + 256),
                wait=False,
            )
        except JournalUnavailable:
            return []
        return [row for row in rows if row.id not in exclude]

    def next_due_time(self, exclude: set[int]) -> float | None:
        exclude = exclude | self._finished.ids()
        mine, held = self._mine()
        try:
            found, _ = self.link.run(
                f"SELECT id, next_attempt_at FROM files WHERE state = ANY(%s) {mine} "  # noqa: S608
                "ORDER BY next_attempt_at LIMIT %s",
                (_ACTIVE, *held, len(exclude) + 1),
                wait=False,
            )
        except JournalUnavailable:
            return time.time() + 1.0  # look again soon: the database may be back
        times = [when for row_id, when in found if row_id not in exclude]
        return min(times) if times else None

    def by_source(self, source: PurePosixPath) -> list[Row]:
        return self._select("source = %s ORDER BY id", (os.fsencode(str(source)),))

    def name_holders(self, row_id: int, state: str, dest: PurePosixPath) -> list[Row]:
        where = "state = %s AND dest = %s AND id <> %s"  # by files_by_state: few rows
        return self._select(where, (state, os.fsencode(str(dest)), row_id))

    def verified_at(self, target: str, document_id: str, sha256: str) -> str | None:
        found, _ = self.link.run(
            "SELECT verified_at FROM verified WHERE target = %s AND document_id = %s "
            "AND sha256 = %s",
            (target, document_id, sha256),
            wait=True,
        )
        return str(found[0][0]) if found else None

    def oldest_active(self) -> float | None:
        """The whole fleet's oldest unfinished row (the last value seen, in an outage)."""
        try:
            found, _ = self.link.run(
                "SELECT MIN(received_at) FROM files WHERE state = ANY(%s)", (_ACTIVE,), wait=False
            )
        except JournalUnavailable:
            return self._oldest
        value = found[0][0] if found else None
        self._oldest = (
            datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() if value else None
        )
        return self._oldest

    def counts(self) -> dict[str, int]:
        """The whole fleet's rows by state (the last counts seen, in an outage)."""
        try:
            found, _ = self.link.run(
                "SELECT state, COUNT(*) FROM files GROUP BY state", (), wait=False
            )
        except JournalUnavailable:
            return dict(self._counts)
        self._counts = {state: int(n) for state, n in found}
        return dict(self._counts)

    def recent(self, state: str, limit: int = 10) -> list[Row]:
        return self._select(
            "state = %s ORDER BY finished_at DESC, id DESC LIMIT %s", (state, limit)
        )
