"""Whether a target is taking uploads: healthy, paused after trouble, or being probed.

During an outage one file at a time probes the target, with a backoff that grows to about 15 s;
every other file for that target waits in the journal instead of burning its own retries. When
a probe gets any answer from the EHR the target is up again and the backlog drains. Credentials
refused (HTTP 401) pause the target as misconfigured; its files wait too. Nothing here ever
moves a file to failed/.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE_BASE_SECONDS = 1.0
PROBE_MAX_SECONDS = 15.0  # contract: backoff capped at about 15 s
MISCONFIGURED_PAUSE_SECONDS = 60.0


@dataclass
class TargetHealth:
    name: str
    concurrency: int
    clock: Callable[[], float] = time.time
    paused_until: float = 0.0
    reason: str = ""
    misconfigured: bool = False
    failures: int = 0  # deferrals in a row
    probing: bool = False
    slots: threading.BoundedSemaphore = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.concurrency)

    @property
    def up(self) -> bool:
        return self.failures == 0 and not self.misconfigured

    def waiting_until(self) -> float | None:
        """Until when a file for this target should not even be opened; None: go ahead."""
        with self._lock:
            if self.up:
                return None
            now = self.clock()
            if now < self.paused_until:
                return self.paused_until
            return now + PROBE_BASE_SECONDS if self.probing else None

    def admit(self) -> tuple[bool, bool, float]:
        """(go, as_probe, wait_until): may a file be sent now, is it the probe, else until when
        it should wait."""
        with self._lock:
            if self.up:
                return True, False, 0.0
            now = self.clock()
            if now < self.paused_until:
                return False, False, self.paused_until
            if self.probing:
                return False, False, now + PROBE_BASE_SECONDS
            self.probing = True
            return True, True, 0.0

    def succeeded(self) -> bool:
        """The EHR answered (any answer but 401): up. True when this ends an outage."""
        with self._lock:
            was_down = not self.up
            self.failures = 0
            self.probing = False
            self.misconfigured = False
            self.paused_until = 0.0
            self.reason = ""
            return was_down

    def failed(self, retry_in: float, reason: str, misconfigured: bool = False) -> bool:
        """Transient trouble (or credentials refused): pause. True when this starts a pause,
        so it is logged once, not per file."""
        with self._lock:
            starting = self.up
            self.failures += 1
            self.probing = False
            self.misconfigured = misconfigured
            self.reason = reason
            if misconfigured:
                delay = MISCONFIGURED_PAUSE_SECONDS
            else:
                backoff = min(PROBE_MAX_SECONDS, PROBE_BASE_SECONDS * 2 ** (self.failures - 1))
                # Jitter, so instances sharing one EHR do not probe in step; Retry-After wins.
                delay = max(retry_in, backoff * random.uniform(0.5, 1.0))  # noqa: S311
            self.paused_until = max(self.paused_until, self.clock() + delay)
            return starting

    def released(self) -> None:
        """The probe ended without an answer either way (e.g. shutdown): let another try."""
        with self._lock:
            self.probing = False
