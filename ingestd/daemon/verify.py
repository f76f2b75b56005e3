"""Periodic verification in the daemon (`verify: {every: 24h, sample: 1%}`): every `every`, a
random sample of done/ receipts is read back from the EHR, as `ingestd verify --again` would
(delivery/verifying.py), on a thread of its own with targets of its own, so uploads never wait
for it. Outcomes count in `ingestd_verify_total`; a missing or different document is an ERROR
line, as in the command. The first round runs `every` after start.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import Counter
from collections.abc import Callable

from ingestd.config.model import Config
from ingestd.delivery.verifying import BAD, UNVERIFIED, Checked, Verifier, claim_of, receipts_in
from ingestd.journal import JournalLike
from ingestd.observe.logs import Masker, event
from ingestd.observe.metrics import Metrics
from ingestd.targets import make_target

log = logging.getLogger("ingestd.verify")


class PeriodicVerify:
    def __init__(
        self,
        config: Callable[[], Config],
        journal: JournalLike,
        masker: Masker,
        metrics: Metrics,
        stopping: threading.Event,
    ) -> None:
        self._config = config
        self._journal = journal
        self._masker = masker
        self._metrics = metrics
        self._stopping = stopping
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the rounds when the config asks for them (a reload adding `verify:` needs a
        restart; one removing it stops the rounds)."""
        if self._config().verify is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="ingestd-verify", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            schedule = self._config().verify
            if schedule is None or self._stopping.wait(schedule.every_seconds):
                return
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - a bug or an unreachable done/: next round
                # The type only: the text of an OSError holds a path, and so a patient folder.
                event(log, logging.ERROR, "verify_round_failed", error=type(exc).__name__)

    def round(self) -> list[Checked]:
        """Check one random sample of done/ receipts now."""
        config = self._config()
        if config.verify is None:
            return []
        root = config.paths.done.resolve()
        receipts = receipts_in(root)
        if not receipts:
            return []
        count = min(len(receipts), max(1, math.ceil(len(receipts) * config.verify.sample)))
        claims = [claim_of(root, path) for path in random.sample(receipts, count)]
        names = {c.target for c in claims if c.target in config.targets}
        targets = {name: make_target(config.targets[name]) for name in names if name is not None}
        try:
            results = Verifier(
                targets=targets,
                concurrency={n: config.targets[n].common.concurrency for n in targets},
                journal=self._journal,
                masker=self._masker,
                metrics=self._metrics,
                again=True,
                sleep=self._stopping.wait,
            ).run(claims)
        finally:
            for target in targets.values():
                target.close()
        counts = Counter(r.outcome for r in results)
        event(
            log,
            logging.ERROR if BAD & set(counts) else logging.INFO,
            "verify_round",
            receipts=len(results),
            ok=counts["ok"],
            bad=sum(counts[o] for o in BAD),
            unverified=counts[UNVERIFIED],
        )
        return results
