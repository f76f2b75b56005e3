"""What every journal offers (`JournalLike`): the SQLite file of one instance and the PostgreSQL
database a fleet shares both implement it, and the daemon, pipeline and commands see only this.

The errors a shared journal adds: the database is not reachable now (`JournalUnavailable`),
another instance already claims this file (`AlreadyClaimed`), and this instance no longer holds a
row because a survivor took it over while it was thought dead (`ClaimLost`).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Protocol

from ingestd.journal.rows import Row


class JournalUnavailable(Exception):
    """The shared journal's database does not answer now: nothing new is claimed."""


class AlreadyClaimed(Exception):
    """Another instance of the fleet holds a claim on this very file."""


class ClaimLost(Exception):
    """The row was taken over by another instance: this one must leave the file alone."""


class JournalLike(Protocol):
    """One committed transaction per call; safe to share between threads."""

    # True when other instances share the journal: coordination through it, no lease files.
    shared: bool

    def add(
        self,
        source: PurePosixPath,
        work: PurePosixPath,
        received_at: str,
        identity: str | None = None,
        **values: Any,
    ) -> Row: ...

    def update(self, row_id: int, **values: Any) -> None: ...

    def change(self, row: Row, **values: Any) -> Row: ...

    # Values that a crash may lose (they are worked out again): written with the row's next
    # write, and part of what `get` returns until then.
    def stage(self, row: Row, **values: Any) -> Row: ...

    # Done or failed: the last write of a row, which a shared journal writes in batches (after
    # a crash such a row is filed again and finds its file and receipt in place).
    def finished(self, row_id: int, state: str) -> None: ...

    def make_due(self) -> None: ...

    def delete(self, row_id: int) -> None: ...

    def mark_verified(self, target: str, document_id: str, sha256: str, at: str) -> None: ...

    def forget_verified(self, target: str, document_id: str, sha256: str) -> None: ...

    def get(self, row_id: int) -> Row | None: ...

    def active(self) -> list[Row]: ...

    def held(self, wait: bool = True) -> list[Row]: ...

    def due(self, now: float, exclude: set[int]) -> list[Row]: ...

    def next_due_time(self, exclude: set[int]) -> float | None: ...

    def by_source(self, source: PurePosixPath) -> list[Row]: ...

    # The rows other than `row_id`, in `state`, that record `dest` as their name in done/ or
    # failed/ (two instances of a fleet can choose one name at the same moment).
    def name_holders(self, row_id: int, state: str, dest: PurePosixPath) -> list[Row]: ...

    def keep_for_retry(
        self, source: PurePosixPath, sha256: str, receipts: list[Any], wait: bool = True
    ) -> None: ...

    def take_retried(self, source: PurePosixPath, sha256: str) -> list[dict[str, Any]] | None: ...

    def verified_at(self, target: str, document_id: str, sha256: str) -> str | None: ...

    def oldest_active(self) -> float | None: ...

    def counts(self) -> dict[str, int]: ...

    def recent(self, state: str, limit: int = 10) -> list[Row]: ...

    def heartbeat(self) -> None: ...

    def live_instances(self, lease_seconds: float) -> tuple[str, ...]: ...

    def take_over(self, lease_seconds: float) -> list[Row]: ...

    def leave(self) -> None: ...

    def close(self) -> None: ...
