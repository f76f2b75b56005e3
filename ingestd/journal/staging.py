"""Values a row takes with its next write: what a worker works out that a crash may lose
because it is worked out again (the rules' decision of a file not yet sent). Held in memory,
they cost no journal write of their own; every write of the row, and every read of it through
the same journal, includes them."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from ingestd.journal.rows import Row

# More rows staged than any worker pool holds means a code path that never writes its row:
# the oldest is dropped (it is worked out again), so memory stays bounded.
MAX_STAGED = 10_000


@dataclass
class Staged:
    """Staged values by row id; thread-safe."""

    _values: dict[int, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, row: Row, values: dict[str, Any]) -> Row:
        """Keep `values` for the row's next write; the row as it then will be."""
        with self._lock:
            if row.id not in self._values and len(self._values) >= MAX_STAGED:
                self._values.pop(next(iter(self._values)))
            self._values.setdefault(row.id, {}).update(values)
        return dataclasses.replace(row, **values)

    def take(self, row_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """What a write of the row sets: the staged values, then `values` over them."""
        with self._lock:
            staged = self._values.pop(row_id, None)
        return {**staged, **values} if staged else values

    def drop(self, row_id: int) -> None:
        with self._lock:
            self._values.pop(row_id, None)

    def over(self, row: Row) -> Row:
        """`row` as read from the database, with what is staged for it."""
        with self._lock:
            staged = dict(self._values.get(row.id) or {})
        return dataclasses.replace(row, **staged) if staged else row
