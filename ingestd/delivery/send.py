"""Sending one decided file to its target: admission (a paused target lets one probe through),
the upload slots, retrying, and what each answer means for the file and the target.

`Sender.send` returns what happened: `Delivered` (the pipeline records it and files the file),
`Rejected` (the EHR refused the document: to failed/), or None — the file waits, its next
attempt already in the journal. Transient trouble that outlasts the retries pauses the target;
refused credentials pause it as misconfigured. Nothing here moves a file to failed/ for an
outage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ingestd.delivery.decide import Rejected
from ingestd.delivery.fleet import Fleet
from ingestd.delivery.health import TargetHealth
from ingestd.delivery.retrying import Deferred, Delivered, Refused, RetryPolicy, deliver
from ingestd.journal import JournalLike, Row
from ingestd.observe.logs import Masker, event
from ingestd.observe.metrics import Metrics
from ingestd.targets.base import (
    AuthError,
    PermanentError,
    Target,
    TargetError,
    TransientError,
    Upload,
)

log = logging.getLogger("ingestd.pipeline")

RETRY_SOON_SECONDS = 5.0  # an error of ours, a missing target: one cheap try every few seconds
PROBE_POLICY = RetryPolicy(max_sends=1)
UNKNOWN_OUTCOME_WAIT_SECONDS = 20.0


class Sender:
    def __init__(
        self,
        journal: JournalLike,
        fleet: Fleet,
        masker: Masker,
        metrics: Metrics,
        stopping: threading.Event,
        policy: RetryPolicy,
    ) -> None:
        self.journal = journal
        self.fleet = fleet
        self.masker = masker
        self.metrics = metrics
        self.stopping = stopping
        self.policy = policy

    def send(
        self, row: Row, target: Target, upload: Upload, resumed: bool
    ) -> Delivered | Rejected | None:
        health = self.fleet.health(target.name)
        with self.fleet.admission(health) as admitted:
            if not admitted.go:
                self.journal.update(row.id, next_attempt_at=admitted.wait_until)
                return None
            reconcile = resumed or row.state == "uploading" or row.outcome_unknown
            if reconcile and row.sent_at is not None and time.time() < _settled_at(row, target):
                return self._ask_before_resending(row, target, upload, health)
            return self._send(row, target, upload, health, admitted.probe, reconcile)

    def _send(
        self,
        row: Row,
        target: Target,
        upload: Upload,
        health: TargetHealth,
        probe: bool,
        reconcile: bool,
    ) -> Delivered | Rejected | None:
        sends = 0

        def before_send() -> None:
            nonlocal sends
            sends += 1
            self.journal.update(
                row.id, state="uploading", attempts=row.attempts + sends, sent_at=time.time()
            )

        def retrying(error: TransientError, delay: float) -> None:
            self.metrics.retried(target.name)
            event(
                log,
                logging.WARNING,
                "upload_retry",
                file=self.masker.path(row.source),
                target=target.name,
                http_status=error.http_status,
                reason=error.message,
                retry_in=round(delay, 1),
            )

        started = time.monotonic()
        with health.slots:
            result = deliver(
                target,
                upload,
                # A probe of a paused target sends once: the backoff lives in TargetHealth.
                policy=PROBE_POLICY if probe else self.policy,
                reconcile_first=reconcile,
                before_send=before_send,
                # Once another file has found the target down, stop retrying and wait.
                should_stop=self.stopping.is_set
                if probe
                else lambda: self.stopping.is_set() or not health.up,
                sleep=self.stopping.wait,  # a backoff that a shutdown cuts short
                on_retry=retrying,
            )
        seconds = time.monotonic() - started
        if isinstance(result, Delivered):
            outcome = "found" if result.found_existing else "done"
            self.metrics.finished(target.name, outcome, seconds, upload.size)
            self.fleet.answered(health)
            return result
        if isinstance(result, Deferred):
            self.metrics.finished(target.name, "deferred", seconds, 0)
            self._wait(row, target, health, result)
            return None
        return self._refused(row, target, health, result, seconds)

    def _refused(
        self, row: Row, target: Target, health: TargetHealth, refused: Refused, seconds: float
    ) -> Rejected | None:
        error = refused.error
        if isinstance(error, AuthError):
            self.metrics.finished(target.name, "credentials_refused", seconds, 0)
            self._refused_credentials(row, target, health, error, refused.attempts)
            return None
        if isinstance(error, PermanentError):
            self.metrics.finished(target.name, "rejected", seconds, 0)
            self.fleet.answered(health)
            self.journal.update(row.id, attempts=row.attempts + refused.attempts)
            kind = error.kind if error.kind in _EHR_KINDS else "rejected"
            return Rejected(kind, _rejection_message(error, target), error.http_status)
        self.metrics.finished(target.name, "error", seconds, 0)
        health.released()
        self.journal.update(row.id, next_attempt_at=time.time() + RETRY_SOON_SECONDS)
        event(log, logging.ERROR, "upload_error", target=target.name, reason=error.message)
        return None

    def _ask_before_resending(
        self, row: Row, target: Target, upload: Upload, health: TargetHealth
    ) -> Delivered | None:
        """A send whose outcome is unknown may still be in the EHR's hands (the process died
        mid-request; the EHR may store it seconds later). Ask at once — usually it is there —
        but if not, wait until that send must be over before asking again and sending."""
        try:
            found = target.find(upload)
        except TargetError:
            found = None
        else:
            self.fleet.answered(health)  # an answer, found or not: the EHR is up
        if found is not None:
            return Delivered(found, attempts=0, found_existing=True)
        self.journal.update(row.id, next_attempt_at=_settled_at(row, target))
        return None

    def _refused_credentials(
        self, row: Row, target: Target, health: TargetHealth, exc: AuthError, attempts: int
    ) -> None:
        """Credentials refused (401) or a certificate that does not verify: the target pauses
        as misconfigured (one loud line saying what to do); the file waits."""
        if not self.fleet.current(target):
            health.released()  # the old credentials were refused; new ones are in
        elif health.failed(0.0, exc.message, misconfigured=True):
            event(
                log,
                logging.ERROR,
                "target_misconfigured",
                target=target.name,
                reason=exc.message,
                action=exc.action,
            )
        # State and outcome_unknown stay: a refused look-up settles nothing. When nothing was
        # sent (a token or a TLS handshake refused), the row is as it was before this try, so
        # the next one sends at once instead of asking about a send that never happened.
        unsent: dict[str, Any] = {} if attempts else {"state": row.state, "sent_at": row.sent_at}
        with self.fleet.reloading:
            self.journal.update(
                row.id,
                attempts=row.attempts + attempts,
                next_attempt_at=self.fleet.retry_at(target, health.paused_until),
                **unsent,
            )

    def _wait(self, row: Row, target: Target, health: TargetHealth, deferred: Deferred) -> None:
        """Transient trouble outlasted the retries: the file waits in the journal."""
        if self.stopping.is_set() or not self.fleet.current(target):
            health.released()  # shutting down, or a reload replaced the target: not an outage
            next_attempt = time.time()
        else:
            if health.failed(deferred.retry_in, deferred.reason):
                event(
                    log,
                    logging.WARNING,
                    "target_unavailable",
                    target=health.name,
                    reason=deferred.reason,
                    action="files wait and are sent when it answers again",
                )
            next_attempt = health.paused_until
        with self.fleet.reloading:
            next_attempt = self.fleet.retry_at(target, next_attempt)
            self.journal.update(
                row.id,
                attempts=row.attempts + deferred.attempts,
                outcome_unknown=deferred.outcome_unknown,
                state="uploading" if deferred.outcome_unknown else "claimed",
                next_attempt_at=next_attempt,
            )
        event(
            log,
            logging.WARNING,
            "upload_deferred",
            file=self.masker.path(row.source),
            target=health.name,
            retry_in=round(max(0.0, next_attempt - time.time()), 1),
            reason=deferred.reason,
        )


def _settled_at(row: Row, target: Target) -> float:
    """When a send whose outcome is unknown must be over, whatever the EHR did with it."""
    assert row.sent_at is not None
    return row.sent_at + min(target.timeout_seconds, UNKNOWN_OUTCOME_WAIT_SECONDS)


_EHR_KINDS = frozenset({"patient_not_found", "unreadable", "too_large", "invalid_patient_id"})


def _rejection_message(exc: PermanentError, target: Target) -> str:
    if exc.kind == "too_large":
        return (
            f"the EHR, or a proxy in front of it, refused the upload as too large (HTTP "
            f"{exc.http_status}): its limit is lower than the {target.max_bytes} bytes that "
            f"{target.name} is configured to send; set the target's max_bytes: to the EHR's "
            "limit (for Leyr, the request is about 4/3 of the file's size), split or compress "
            "the file, then `ingestd retry`"
        )
    if exc.kind == "unreadable":
        return f"{exc.message}; check the file and its permissions, then `ingestd retry`"
    if exc.kind == "patient_not_found":
        said = f"HTTP {exc.http_status}" if exc.http_status else exc.message
        return (
            f"the EHR does not know this patient ({said}): check the patient "
            "folder's name or mapping, move the file to the right folder, then `ingestd retry`"
        )
    if exc.kind == "invalid_patient_id":
        return f"{exc.message}; then `ingestd retry`"
    return (
        f"the EHR refused the document (HTTP {exc.http_status}): {exc.message}; fix the file or "
        "the rule, then `ingestd retry`"
    )
