"""Signals: SIGTERM/SIGINT stop claiming and let in-flight work finish or park (a second one exits
at once: every claimed file is parked in the journal, which is crash-safe); SIGHUP asks for a
reload. Handlers only set flags and wake the loop."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class Signals:
    def __init__(self, stopping: threading.Event, wake: threading.Event) -> None:
        self.stopping = stopping
        self.wake = wake
        self.reload_requested = False
        self._stop_requests = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def request_stop(self) -> None:
        self._on_stop(signal.SIGTERM, None)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requests += 1
        if self._stop_requests > 1:
            # Second signal: leave now. Every claimed file is parked in the journal.
            os._exit(0)
        self.stopping.set()
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()
