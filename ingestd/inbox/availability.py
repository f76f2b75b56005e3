"""Folders of the inbox that stopped answering (a share whose mount died): paused, logged once,
retried with a backoff, resumed when they answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ingestd.inbox.scan import INBOX_ROOT
from ingestd.observe.logs import event
from ingestd.unreachable import errno_name

log = logging.getLogger("ingestd.watcher")


BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 15.0


@dataclass
class _Outage:
    reason: str
    errno: str
    since: float  # wall clock
    failures: int
    retry_at: float  # monotonic


@dataclass
class Availability:
    """Inbox folders that stopped answering (a share whose mount died): each one is paused,
    logged once, retried with a backoff, and resumed (the caller scans it) when it answers.
    The inbox itself is the folder `INBOX_ROOT`; a folder below one that is down counts as
    down too."""

    describe: Callable[[PurePosixPath], str]  # a folder as the log may name it (masked)
    clock: Callable[[], float] = time.monotonic
    _down: dict[PurePosixPath, _Outage] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._down)

    def is_down(self, rel: PurePosixPath) -> bool:
        return any(folder in self._down for folder in (rel, *rel.parents))

    def inbox_down(self) -> bool:
        return INBOX_ROOT in self._down

    def failed(self, rel: PurePosixPath, exc: OSError | None, reason: str = "") -> None:
        """`rel` did not answer: pause it (one ERROR line when this starts an outage)."""
        reason = reason or (exc.strerror if exc is not None and exc.strerror else "") or "error"
        name = errno_name(exc) if exc is not None and exc.errno is not None else ""
        outage = self._down.get(rel)
        now = self.clock()
        if outage is None:
            outage = self._down[rel] = _Outage(reason, name, time.time(), 0, now)
            event(
                log,
                logging.ERROR,
                "folder_unavailable",
                folder=self.describe(rel),
                reason=reason,
                errno=name or None,
                action="files there wait; ingestd retries and scans it when it answers again "
                "(check the share's mount)",
            )
        outage.failures += 1
        backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (outage.failures - 1))
        outage.retry_at = now + backoff

    def answered(self, rel: PurePosixPath) -> bool:
        """`rel` answered: True when that ends an outage (the caller scans it)."""
        outage = self._down.pop(rel, None)
        if outage is None:
            return False
        event(
            log,
            logging.WARNING,
            "folder_available",
            folder=self.describe(rel),
            down_seconds=round(time.time() - outage.since, 1),
        )
        return True

    def forget(self, rel: PurePosixPath) -> None:
        """`rel` is gone for good (removed, or no longer watched): nothing to wait for."""
        self._down.pop(rel, None)

    def due(self) -> list[PurePosixPath]:
        """Folders to try again now, the inbox first."""
        now = self.clock()
        return sorted(rel for rel, outage in self._down.items() if outage.retry_at <= now)

    def next_due(self) -> float | None:
        return min((outage.retry_at for outage in self._down.values()), default=None)
