"""The shared journal's last write per file, in batches: rows recorded done or failed are written
together every FLUSH_EVERY seconds (or at BATCH rows), one statement for many files instead of a
round trip each. Until its batch is written a row reads as it was (`uploaded`, `rejected`) in the
database; if the process dies first, the row is filed again after the restart (or by the survivor
that takes it over), which finds its file and receipt already in place and only records the end."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ingestd.journal.interface import JournalUnavailable

log = logging.getLogger("ingestd.journal")

FLUSH_EVERY = 0.2  # seconds a finished row may wait for its batch
BATCH = 64  # rows that start a batch at once


class FinishedRows:
    """Finished rows not yet written, and the thread that writes them (started on first use)."""

    def __init__(self, write: Callable[[dict[int, str]], None]) -> None:
        self._write = write  # writes {row id: final state}; JournalUnavailable in an outage
        self._pending: dict[int, str] = {}
        # The batch being written: still finished to this journal until its statement is done
        # (read from the database in the meantime, those rows would look due again).
        self._writing: dict[int, str] = {}
        self._flushing = threading.Lock()  # one batch at a time
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row_id: int, state: str) -> None:
        with self._lock:
            self._pending[row_id] = state
            closed = self._closed.is_set()
            if self._thread is None and not closed:
                self._thread = threading.Thread(
                    target=self._run, name="journal-finished", daemon=True
                )
                self._thread.start()
            full = len(self._pending) >= BATCH
        if closed:
            self.flush()  # a row finished while stopping: no thread to write it
        elif full:
            self._ready.set()

    def state_of(self, row_id: int) -> str | None:
        """The final state of a row whose batch is not written yet."""
        with self._lock:
            return self._pending.get(row_id) or self._writing.get(row_id)

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._pending) | set(self._writing)

    def flush(self) -> None:
        """Write what is pending now; in an outage it stays pending for the next try."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._writing = batch
            if not batch:
                return
            try:
                self._write(batch)
            except JournalUnavailable:
                with self._lock:
                    self._pending = {**batch, **self._pending}
            except Exception as exc:  # noqa: BLE001 - the thread goes on; the rows are filed again
                log.error(
                    "event=journal_batch_failed rows=%d error=%s", len(batch), type(exc).__name__
                )
            finally:
                with self._lock:
                    self._writing = {}

    def close(self) -> None:
        """Stop the thread and write what is pending (not waiting through an outage)."""
        self._closed.set()
        self._ready.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._ready.wait(FLUSH_EVERY)
            self._ready.clear()
            self.flush()
