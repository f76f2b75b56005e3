"""Settling: when a file in the inbox is *ready* — two looks at least the settle time apart see
the same size, mtime, ctime and inode, nobody holds it open for writing, it is not empty, and its
content is recognised (or has been quiet for the grace time).
"""

from __future__ import annotations

import heapq
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ingestd import content
from ingestd.names import is_ignored_path

log = logging.getLogger("ingestd.watcher")


@dataclass
class _Pending:
    first_seen: float  # wall clock, for received_at
    snapshot: content.Snapshot | None
    changed_at: float  # monotonic
    due: float


@dataclass(frozen=True)
class Ready:
    rel: PurePosixPath
    received: float  # wall clock when first seen
    snapshot: content.Snapshot | None  # None for non-regular paths
    empty_expired: bool = False
    format: str | None = None  # the MIME type the last look detected (None: not looked for)


@dataclass
class Settler:
    """Tracks files that are not ready yet and says when each one is."""

    root: Path
    settle_for: Callable[[PurePosixPath], float]
    empty_fail_seconds: float = 3600.0
    unknown_type_grace_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _pending: dict[PurePosixPath, _Pending] = field(default_factory=dict)
    _heap: list[tuple[float, PurePosixPath]] = field(default_factory=list)
    _held: dict[PurePosixPath, content.Snapshot | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pending)

    def busy(self) -> bool:
        """True while some tracked file may still become ready (empty files do not count)."""
        return any(p.snapshot is None or p.snapshot.size > 0 for p in self._pending.values())

    def oldest_wall(self) -> float | None:
        return min((p.first_seen for p in self._pending.values()), default=None)

    def hold(self, rel: PurePosixPath) -> None:
        """Leave a path alone (a rule ignores it) until it changes."""
        self._pending.pop(rel, None)
        self._held[rel] = _snapshot(self.root / rel)

    def age(self, rel: PurePosixPath) -> float:
        """Seconds since `rel` was first seen (0 for a path not tracked)."""
        entry = self._pending.get(rel)
        return time.time() - entry.first_seen if entry is not None else 0.0

    def postpone(self, rel: PurePosixPath, seconds: float) -> None:
        """Look at `rel` again in `seconds`, not now (a fleet's other instance takes it)."""
        entry = self._pending.get(rel)
        if entry is not None:
            self._later(rel, entry, self.clock() + seconds)

    def notice(self, rel: PurePosixPath) -> None:
        """A hint or a scan saw `rel`: look at it soon."""
        if is_ignored_path(rel):
            return
        if rel in self._held:
            if _snapshot(self.root / rel) == self._held[rel]:
                return
            del self._held[rel]  # changed (or gone): judge it again
        now = self.clock()
        entry = self._pending.get(rel)
        if entry is None:
            self._pending[rel] = _Pending(time.time(), None, now, now)
            heapq.heappush(self._heap, (now, rel))
        elif entry.due > now:
            entry.due = now
            heapq.heappush(self._heap, (now, rel))

    def next_due(self) -> float | None:
        while self._heap:
            due, rel = self._heap[0]
            entry = self._pending.get(rel)
            if entry is None or entry.due != due:
                heapq.heappop(self._heap)  # stale
                continue
            return due
        return None

    def due_paths(self) -> Iterator[PurePosixPath]:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, rel = heapq.heappop(self._heap)
            entry = self._pending.get(rel)
            if entry is not None and entry.due == due:
                yield rel

    def _later(self, rel: PurePosixPath, entry: _Pending, when: float) -> None:
        entry.due = when
        heapq.heappush(self._heap, (when, rel))

    def look(self, rel: PurePosixPath) -> Ready | None:
        """Look once at a due path: Ready, or None (gone, or looked at again later)."""
        entry = self._pending.get(rel)
        if entry is None:
            return None
        path = self.root / rel
        try:
            st = os.lstat(path)
        except OSError:
            del self._pending[rel]
            return None
        now = self.clock()
        if stat.S_ISDIR(st.st_mode):
            del self._pending[rel]
            return None
        settle = self.settle_for(rel)
        if not stat.S_ISREG(st.st_mode):
            del self._pending[rel]
            return Ready(rel, entry.first_seen, None)
        snap = content.Snapshot.of(st)
        if snap != entry.snapshot:
            entry.snapshot = snap
            entry.changed_at = now
            self._later(rel, entry, now + settle)
            return None
        quiet = now - entry.changed_at
        if quiet < settle:
            self._later(rel, entry, entry.changed_at + settle)
            return None
        if snap.size == 0:
            age = time.time() - entry.first_seen
            if age >= self.empty_fail_seconds:
                del self._pending[rel]
                return Ready(rel, entry.first_seen, snap, empty_expired=True)
            self._later(rel, entry, now + min(max(settle, 5.0), self.empty_fail_seconds - age))
            return None
        if content.writer_active(path):
            self._later(rel, entry, now + settle)
            return None
        fmt = _format_of(path) if quiet < self.unknown_type_grace_seconds else None
        if fmt == "":
            # A preallocated file may still be all zeros: look again before calling it unknown.
            self._later(
                rel,
                entry,
                min(now + max(settle, 1.0), entry.changed_at + self.unknown_type_grace_seconds),
            )
            return None
        del self._pending[rel]
        # The type travels with the claim (the claim checks it is still this inode, size and
        # mtime), so the pipeline does not detect it a second time.
        return Ready(rel, entry.first_seen, snap, format=fmt)


def _snapshot(path: Path) -> content.Snapshot | None:
    try:
        return content.Snapshot.of(os.lstat(path))
    except OSError:
        return None


def _format_of(path: Path) -> str | None:
    """The detected MIME type, "" when not recognised, None when it cannot be read (the
    pipeline reports why)."""
    try:
        fd, _ = content.open_regular(path)
    except (OSError, content.UnsafeFile):
        return None
    try:
        return content.detect_format(fd)
    finally:
        os.close(fd)
