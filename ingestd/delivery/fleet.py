"""The fleet of live targets: each configured target with its health, swapped by a reload.

Owns building targets from the config (an unchanged target keeps its connection pool and its
pause across a reload; a new or changed one starts fresh), the reload lock that makes "swap the
targets" and "write when a file tries again" one step each, admission of a file to a target
(the probe of a paused target as a context manager, so a probe is always released), and telling
the daemon when a target answers again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ingestd.delivery.health import TargetHealth
from ingestd.observe.logs import event
from ingestd.targets import TargetSettings, make_target
from ingestd.targets.base import Target

log = logging.getLogger("ingestd.pipeline")


@dataclass(frozen=True)
class Admission:
    """Whether a file may be sent now (`go`), as the paused target's probe, else until when
    it waits."""

    go: bool
    probe: bool
    wait_until: float


class Fleet:
    def __init__(self, on_up: Callable[[str], None] = lambda name: None) -> None:
        self._targets: dict[str, Target] = {}
        self._settings: dict[str, TargetSettings] = {}
        self._health: dict[str, TargetHealth] = {}
        self._on_up = on_up
        # Held while a reload swaps targets, and while a worker decides when a file of a
        # target tries again: a reload cannot slip between that decision and its write.
        self.reloading = threading.Lock()

    def build(self, settings: Mapping[str, TargetSettings]) -> None:
        """Targets for `settings`, keeping those whose settings did not change."""
        targets = {}
        for name, wanted in settings.items():
            current = self._targets.get(name)
            if current is not None and self._settings.get(name) == wanted:
                targets[name] = current
                continue
            # New or changed (fixed credentials, say): a fresh start, not the old pause.
            targets[name] = make_target(wanted)
            self._health[name] = TargetHealth(name, wanted.common.concurrency)
        self._targets = targets
        self._settings = dict(settings)

    def get(self, name: str) -> Target | None:
        return self._targets.get(name)

    def health(self, name: str) -> TargetHealth:
        """The health of target `name`; KeyError if it was never configured."""
        return self._health[name]

    def __len__(self) -> int:
        return len(self._targets)

    def current(self, target: Target) -> bool:
        """False when a reload replaced this target while a file was being sent with it."""
        return self._targets.get(target.name) is target

    def retry_at(self, target: Target, when: float) -> float:
        """When a file of `target` tries again; at once if a reload replaced the target (new
        credentials or URL deserve a try now, not after the old target's pause). Call it with
        `reloading` held, together with the journal write."""
        return when if self.current(target) else time.time()

    @contextlib.contextmanager
    def admission(self, health: TargetHealth) -> Iterator[Admission]:
        go, probe, wait_until = health.admit()
        try:
            yield Admission(go, probe, wait_until)
        finally:
            if probe:
                # Whatever happened — an answer (which ended the probe already), a look-up too
                # early to resend, an error of ours — this file's probe is over; a probe nobody
                # holds would hold the target's whole backlog for good.
                health.released()

    def answered(self, health: TargetHealth) -> None:
        """The EHR answered: if that ends an outage, its waiting files may go at once."""
        if health.succeeded():
            event(log, logging.INFO, "target_available", target=health.name)
            self._on_up(health.name)

    def states(self) -> dict[str, dict[str, Any]]:
        """Each configured target's state, for /metrics, /healthz and `ingestd status`."""
        return {
            name: {
                "up": health.up,
                "misconfigured": health.misconfigured,
                "paused_until": health.paused_until or None,
                "reason": health.reason or None,
            }
            for name, health in self._health.items()
            if name in self._targets
        }

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
