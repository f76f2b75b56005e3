"""The worker pool: threads that run the pipeline for one journal row at a time.

The loop submits rows and collects outcomes; a row is "in flight" from its submission until its
outcome is queued, so the loop never submits it twice. A bug in the pipeline must not kill a
worker: the row waits 30 s in the journal and the error's type (never its message, which can
carry a path) is logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from ingestd.delivery.pipeline import Outcome
from ingestd.journal import ClaimLost, JournalLike, Row
from ingestd.observe.logs import Masker, event

log = logging.getLogger("ingestd.daemon")

CRASH_RETRY_SECONDS = 30.0


class WorkerPool:
    def __init__(
        self,
        size: int,
        capacity: Callable[[], int],
        process: Callable[[Row, bool], Outcome],
        journal: JournalLike,
        masker: Masker,
        wake: threading.Event,
    ) -> None:
        self._capacity = capacity
        self._process = process
        self._journal = journal
        self._masker = masker
        self._wake = wake
        self._work: queue.Queue[tuple[Row, bool] | None] = queue.Queue()
        self._finished: queue.Queue[Outcome] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._threads = [
            threading.Thread(target=self._run, name=f"ingestd-worker-{n}", daemon=True)
            for n in range(size)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, row: Row, resumed: bool) -> None:
        with self._lock:
            self._in_flight.add(row.id)
        self._work.put((row, resumed))

    def free(self) -> int:
        with self._lock:
            return self._capacity() - len(self._in_flight)

    def busy(self) -> set[int]:
        """The ids of the rows being processed."""
        with self._lock:
            return set(self._in_flight)

    def __len__(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def outcomes(self) -> Iterator[Outcome]:
        """The outcomes finished since the last call."""
        while True:
            try:
                yield self._finished.get_nowait()
            except queue.Empty:
                return

    def finish(self, grace_seconds: float, collect: Callable[[], None], say: bool) -> None:
        """Let the rows in flight finish for up to `grace_seconds` (collecting their outcomes),
        then stop the threads; what is still in flight then stays parked in the journal."""
        if say and len(self):
            event(
                log,
                logging.INFO,
                "stopping",
                in_progress=len(self),
                grace_seconds=grace_seconds,
                action="a second signal stops at once",
            )
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and len(self):
            self._wake.wait(0.2)
            collect()
        collect()
        self.stop()

    def stop(self) -> None:
        """Let each thread end after its current row."""
        for _ in self._threads:
            self._work.put(None)

    def join(self, timeout: float) -> None:
        """Wait (up to `timeout` each) for the threads that `stop` told to end."""
        for thread in self._threads:
            thread.join(timeout)

    def _lost(self, row: Row) -> Outcome:
        """A survivor of the fleet took this row over while this instance was thought dead:
        the file is its now (it asks the EHR before sending again); leave it alone."""
        event(log, logging.WARNING, "claim_lost", file=self._masker.path(row.source))
        return Outcome("gone", row.source)

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            row, resumed = item
            try:
                outcome = self._process(row, resumed)
            except ClaimLost:
                outcome = self._lost(row)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                # Only the type: messages of OS errors can carry a path (patient data).
                event(
                    log,
                    logging.ERROR,
                    "worker_error",
                    file=self._masker.path(row.source),
                    error=type(exc).__name__,
                )
                try:
                    self._journal.update(row.id, next_attempt_at=time.time() + CRASH_RETRY_SECONDS)
                    outcome = Outcome("deferred", row.source)
                except ClaimLost:
                    outcome = self._lost(row)
            self._finished.put(outcome)
            with self._lock:
                self._in_flight.discard(row.id)
            self._wake.set()
