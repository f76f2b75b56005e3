"""The fleet on a shared journal: instances register and heartbeat by the database's clock, and
exactly one survivor takes over the rows of an instance whose heartbeat is older than the lease.

Host clocks never decide who is dead: `seen_at` is set by the server's `now()` and compared with
it. The takeover is one transaction: the dead instance's row is locked with
`FOR UPDATE SKIP LOCKED` (a second survivor skips it), its active rows change holder, and it is
deleted. Rows whose holder is not registered at all (an instance that left while holding parked
rows) are taken the same way; the row lock of the UPDATE lets only one survivor have each.
Taken-over rows are due at once and resumed: the pipeline asks the EHR before sending again.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from ingestd.journal.interface import JournalUnavailable
from ingestd.journal.rows import ACTIVE_STATES, COLUMNS, Row, row_from_db

if TYPE_CHECKING:
    from ingestd.journal.finishing import FinishedRows
    from ingestd.journal.pglink import Link

_SELECTED = (*COLUMNS, "holder")


class Roster:
    """Heartbeat, takeover and leaving, for PostgresJournal (its `link` and `instance`)."""

    link: Link
    instance: str | None
    _finished: FinishedRows

    def heartbeat(self, wait: bool = False) -> None:
        """Register or renew this instance; an outage is only logged (by the link)."""
        if self.instance is None:
            return
        try:
            self.link.run(
                "INSERT INTO instances (id, host, pid) VALUES (%s, %s, %s) ON CONFLICT (id) "
                "DO UPDATE SET seen_at = now(), host = EXCLUDED.host, pid = EXCLUDED.pid",
                (self.instance, socket.gethostname(), os.getpid()),
                wait=wait,
            )
        except JournalUnavailable:
            return

    def live_instances(self, lease_seconds: float) -> tuple[str, ...]:
        """The instances whose heartbeat is within the lease (by the database's clock), sorted;
        () in an outage: each instance then looks at every file, as alone."""
        if self.instance is None:
            return ()
        try:
            found, _ = self.link.run(
                "SELECT id FROM instances WHERE seen_at >= now() - make_interval(secs => %s) "
                "ORDER BY id",
                (lease_seconds,),
                wait=False,
            )
        except JournalUnavailable:
            return ()
        return tuple(name for (name,) in found)

    def take_over(self, lease_seconds: float) -> list[Row]:
        """Hold every active row of instances gone past their lease; the rows now ours."""
        if self.instance is None or self.link.up_for() < lease_seconds:
            # Connected for less than a lease (just started, or the database just came back):
            # the others may not have had the chance to say they are alive.
            return []
        try:
            with self.link.transaction() as db:
                dead = [
                    name
                    for (name,) in db.execute(
                        "SELECT id FROM instances WHERE id <> %s "
                        "AND seen_at < now() - make_interval(secs => %s) "
                        "FOR UPDATE SKIP LOCKED",
                        (self.instance, lease_seconds),
                    ).fetchall()
                ]
                found = db.execute(
                    f"UPDATE files SET holder = %s, next_attempt_at = 0, updated_at = %s, "  # noqa: S608
                    "outcome_unknown = CASE WHEN state = 'uploading' THEN 1 "
                    "ELSE outcome_unknown END "
                    "WHERE state = ANY(%s) AND (holder = ANY(%s) OR holder IS NULL "
                    "OR holder NOT IN (SELECT id FROM instances)) "
                    f"RETURNING {', '.join(_SELECTED)}",
                    (self.instance, time.time(), list(ACTIVE_STATES), dead),
                ).fetchall()
                db.execute("DELETE FROM instances WHERE id = ANY(%s)", (dead,))
        except JournalUnavailable:
            return []
        return [_row(record) for record in found]

    def leave(self) -> None:
        """Leave the fleet at a clean stop, unless rows are parked here: those stay with this
        instance until it is back, or are taken over when its lease runs out."""
        if self.instance is None:
            return
        self._finished.close()  # the rows finished last are written first
        try:
            self.link.run(
                "DELETE FROM instances WHERE id = %s AND NOT EXISTS (SELECT 1 FROM files "
                "WHERE holder = %s AND state = ANY(%s))",
                (self.instance, self.instance, list(ACTIVE_STATES)),
                wait=False,
            )
        except JournalUnavailable:
            return

    def members(self) -> list[dict[str, Any]]:
        """Every registered instance and the seconds since its heartbeat (by the database)."""
        found, _ = self.link.run(
            "SELECT id, host, pid, EXTRACT(EPOCH FROM now() - seen_at) FROM instances ORDER BY id",
            (),
            wait=False,
        )
        return [
            {"instance": name, "host": host, "pid": pid, "seen_seconds_ago": round(float(age), 1)}
            for name, host, pid, age in found
        ]


def _row(record: tuple[Any, ...]) -> Row:
    return row_from_db(_SELECTED, record)
