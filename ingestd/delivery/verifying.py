"""Proving receipts: does the EHR still hold each document a done/ receipt names, for that
patient, with the receipt's SHA-256?

Each target is read back with its own `concurrency` at most, by the uploads' rules: after
transient trouble the target pauses (`health.TargetHealth`: jittered backoff, Retry-After
honoured) and one read at a time probes it. When the trouble outlasts the retry policy's
`max_sends` failures in a row (or a Retry-After too long to wait for), or the credentials are
refused, the target is given up on for this run: its other receipts are `unverified` without a
request. An outage is never reported as a missing
or different document. What was proven goes into the journal (`verified`), so a second run skips
it; a mismatch is an ERROR line naming the receipt by a keyed hash, and a metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ingestd.clock import utc_iso
from ingestd.delivery.health import TargetHealth
from ingestd.delivery.retrying import RetryPolicy, backoff_delay
from ingestd.filing.receipts import SUFFIX, Receipt
from ingestd.journal import JournalLike
from ingestd.observe.logs import Masker, event
from ingestd.observe.metrics import Metrics
from ingestd.targets.base import AuthError, Fetched, Target, TargetError, TransientError

log = logging.getLogger("ingestd.verify")

OK = "ok"  # the EHR holds it, for that patient, with that content
SKIPPED = "skipped"  # proven by an earlier run (`--again` checks it anyway)
MISSING = "missing"  # the EHR does not hold that document for that patient
DIFFERENT = "different"  # it holds other content under that id
OTHER_PATIENT = "other_patient"  # its answer names another patient
UNVERIFIED = "unverified"  # not asked, or no answer: an outage, credentials, an odd receipt
BAD = frozenset({MISSING, DIFFERENT, OTHER_PATIENT})
OUTCOMES = (OK, SKIPPED, MISSING, DIFFERENT, OTHER_PATIENT, UNVERIFIED)


@dataclass(frozen=True)
class Claim:
    """What one done/ receipt says the EHR holds."""

    receipt: PurePosixPath  # relative to done/
    target: str
    document_id: str
    patient_id: str
    sha256: str  # of what was sent (a converted file: the PDF)
    size: int | None
    finished_at: str | None = None
    source: str = ""  # the original inbox path: its keyed hash is the one the daemon logged


@dataclass(frozen=True)
class Checked:
    receipt: PurePosixPath
    target: str | None
    document_id: str | None
    outcome: str
    detail: str = ""  # never a patient id, file name or content
    verified_at: str | None = None


@dataclass
class _Pause:
    """One target's health during this run (the uploads' pause and probe rules: after transient
    trouble one read at a time probes it, the others wait), and whether it is given up on."""

    health: TargetHealth
    reason: str = ""
    down: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Verifier:
    targets: Mapping[str, Target]
    concurrency: Mapping[str, int]
    journal: JournalLike
    masker: Masker
    metrics: Metrics = field(default_factory=Metrics)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    again: bool = False
    sleep: Callable[[float], object] = time.sleep

    def run(self, claims: Iterable[Claim | Checked]) -> list[Checked]:
        """Check every claim (a `Checked` passes through as it is), in the order given."""
        items = list(claims)
        results: list[Checked | None] = [None] * len(items)
        by_target: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            if isinstance(item, Checked):
                results[index] = item
            elif item.target not in self.targets:
                results[index] = _checked(item, UNVERIFIED, "its target is not in the config")
            else:
                by_target.setdefault(item.target, []).append(index)
        pools = [
            ThreadPoolExecutor(max(1, self.concurrency.get(name, 1)), f"verify-{name}")
            for name in by_target
        ]
        try:
            futures = []
            for pool, (name, indexes) in zip(pools, by_target.items(), strict=True):
                pause = _Pause(TargetHealth(name, max(1, self.concurrency.get(name, 1))))
                for index in indexes:
                    claim = items[index]
                    assert isinstance(claim, Claim)
                    futures.append((index, pool.submit(self._one, claim, pause)))
            for index, future in futures:
                results[index] = future.result()
        finally:
            for pool in pools:
                pool.shutdown(wait=True)
        done = [r for r in results if r is not None]
        for checked in done:
            if checked.target is not None:
                self.metrics.verified(checked.target, checked.outcome)
        return done

    def _one(self, claim: Claim, pause: _Pause) -> Checked:
        if not self.again:
            earlier = self.journal.verified_at(claim.target, claim.document_id, claim.sha256)
            if earlier is not None:
                return _checked(claim, SKIPPED, "verified earlier", earlier)
        checked = self._ask(claim, pause)
        if checked.outcome == OK:
            assert checked.verified_at is not None
            self.journal.mark_verified(
                claim.target, claim.document_id, claim.sha256, checked.verified_at
            )
        elif checked.outcome in BAD:
            self.journal.forget_verified(claim.target, claim.document_id, claim.sha256)
            event(
                log,
                logging.ERROR,
                "verify_failed",
                receipt=self.masker.path(claim.receipt),
                file=self.masker.path(claim.source) if claim.source else None,
                target=claim.target,
                outcome=checked.outcome,
            )
        return checked

    def _ask(self, claim: Claim, pause: _Pause) -> Checked:
        target, health = self.targets[claim.target], pause.health
        while True:
            if pause.down.is_set():
                return _checked(claim, UNVERIFIED, f"not asked: {pause.reason}")
            go, probe, until = health.admit()
            if not go:
                self.sleep(min(1.0, max(0.0, until - time.time())))
                continue
            try:
                fetched = target.fetch(claim.document_id, claim.patient_id)
            except TransientError as exc:
                # Reads that were already under way when the trouble began count once, as one
                # failure; after that only the probe's count.
                if probe or health.up:
                    delay = backoff_delay(health.failures + 1, self.policy, exc.retry_after)
                    reason = f"the EHR is not answering ({exc.message})"
                    health.failed(delay, reason)
                    if (
                        health.failures >= self.policy.max_sends
                        or delay > self.policy.max_inline_wait
                    ):
                        return self._paused(claim, pause, reason)
                continue
            except AuthError as exc:
                health.failed(0.0, exc.message, misconfigured=True)
                return self._paused(claim, pause, f"credentials refused ({exc.message})")
            except TargetError as exc:
                health.succeeded()  # an answer, if not the one we wanted
                return _checked(claim, UNVERIFIED, f"the EHR refused to say ({exc.message})")
            health.succeeded()
            return _compare(claim, fetched)

    def _paused(self, claim: Claim, pause: _Pause, reason: str) -> Checked:
        with pause.lock:
            first = not pause.down.is_set()
            if first:
                pause.reason = reason
                pause.down.set()
        if first:
            event(log, logging.WARNING, "verify_target_paused", target=claim.target, reason=reason)
        return _checked(claim, UNVERIFIED, reason)


def _compare(claim: Claim, fetched: Fetched | None) -> Checked:
    if fetched is None:
        return _checked(claim, MISSING, "the EHR does not hold this document for this patient")
    if fetched.other_patient:
        return _checked(claim, OTHER_PATIENT, "the EHR files this document under another patient")
    if fetched.sha256 != claim.sha256 or (claim.size is not None and fetched.size != claim.size):
        return _checked(claim, DIFFERENT, "the EHR holds other content under this document id")
    return _checked(claim, OK, "", utc_iso())


def _checked(claim: Claim, outcome: str, detail: str, at: str | None = None) -> Checked:
    return Checked(claim.receipt, claim.target, claim.document_id, outcome, detail, at)


def receipts_in(folder: Path) -> list[Path]:
    """Every receipt in a folder of done/ (or done/ itself), in path order."""
    return sorted(folder.rglob("*" + SUFFIX)) if folder.is_dir() else []


def claim_of(root: Path, path: Path) -> Claim | Checked:
    """What a receipt in done/ (`root`) says the EHR holds; one that cannot say is `unverified`
    as it is."""
    rel = PurePosixPath(path.relative_to(root))
    try:
        receipt = Receipt.read(path)
    except (OSError, ValueError):
        return Checked(rel, None, None, UNVERIFIED, "the receipt cannot be read")
    fields = (receipt.target, receipt.document_id, receipt.patient_id, receipt.sha256)
    if receipt.status != "done" or not all(isinstance(f, str) and f for f in fields):
        detail = "the receipt names no target, document id, patient or sha256"
        return Checked(rel, receipt.target, receipt.document_id, UNVERIFIED, detail)
    size = receipt.size if isinstance(receipt.size, int) else None
    return Claim(
        rel,
        str(receipt.target),
        str(receipt.document_id),
        str(receipt.patient_id),
        str(receipt.sha256),
        size,
        receipt.finished_at,
        receipt.source,
    )
