"""The pipeline: what happens to one claimed file, from reading it to its receipt.

    read (one descriptor) → decide (rules, recorded in the journal) → local checks →
    deliver (retrying) → file into done/ or failed/ with a receipt

Each step commits its state to the journal before the side effect that follows, so `process`
can be called again on any row after a crash and carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.assess import Rejected, check_before_upload, decision_of, evaluate, rule_failure
from ingestd.claims import Claimer
from ingestd.config import Config
from ingestd.filing import free_name, place
from ingestd.journal import Journal, Row
from ingestd.logs import Masker, event
from ingestd.receipts import receipt_path, utc_now, write_receipt
from ingestd.retrying import Deferred, RetryPolicy, deliver
from ingestd.rules import Decision
from ingestd.targets.base import AuthError, PermanentError, Target, TargetError, Upload

log = logging.getLogger("ingestd.pipeline")

AUTH_PAUSE_SECONDS = 60.0
FILING_RETRY_SECONDS = 30.0


@dataclass
class TargetHealth:
    """Whether a target is taking uploads; shared by all workers."""

    name: str
    concurrency: int
    paused_until: float = 0.0
    reason: str = ""
    misconfigured: bool = False
    slots: threading.BoundedSemaphore = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.concurrency)

    def pause(self, seconds: float, reason: str, misconfigured: bool = False) -> bool:
        """Pause; True when this starts a pause (log it), False when already paused."""
        with self.lock:
            starting = self.paused_until <= time.time()
            self.paused_until = max(self.paused_until, time.time() + seconds)
            self.reason = reason
            self.misconfigured = misconfigured
            return starting

    def resume(self) -> bool:
        with self.lock:
            was = self.paused_until > 0
            self.paused_until = 0.0
            self.reason = ""
            self.misconfigured = False
            return was


@dataclass(frozen=True)
class Outcome:
    """What `process` did: done | failed | deferred | released | ignored | gone."""

    result: str
    rel: PurePosixPath


@dataclass
class Pipeline:
    config: Callable[[], Config]
    journal: Journal
    claimer: Claimer
    targets: Callable[[], dict[str, Target]]
    health: Callable[[str], TargetHealth]
    masker: Masker
    stopping: threading.Event
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def inbox(self) -> Path:
        return self.config().paths.inbox

    # --- one file --------------------------------------------------------------------------

    def process(self, row: Row, resumed: bool = False) -> Outcome:
        if row.state in ("uploaded", "rejected"):
            return self.finish(row)
        work = self.inbox / row.work
        try:
            fd, before = content.open_regular(work)
        except FileNotFoundError:
            event(log, logging.ERROR, "claimed_file_missing", file=self.masker.path(row.source))
            self.journal.delete(row.id)
            return Outcome("gone", row.source)
        except content.UnsafeFile as exc:
            return self._reject(row, Rejected(exc.kind, f"{row.source.name} {exc.message}"))
        try:
            return self._process_open(row, fd, before, resumed)
        except Rejected as exc:
            return self._reject(row, exc)
        finally:
            os.close(fd)

    def _process_open(self, row: Row, fd: int, before: os.stat_result, resumed: bool) -> Outcome:
        sha256, size = content.sha256_of(fd)
        after = os.fstat(fd)
        if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
            after.st_size,
            after.st_mtime_ns,
            after.st_ctime_ns,
        ) or size != after.st_size:
            return self._changed(row)
        fmt = row.format if row.decision is not None and row.format else content.detect_format(fd)
        if row.decision is None:
            patient_id, verdict = evaluate(
                self.config(),
                row.source,
                fmt,
                size,
                mtime=datetime.fromtimestamp(after.st_mtime, UTC),
                received=datetime.fromisoformat(row.received_at.replace("Z", "+00:00")),
            )
            decision = decision_of(verdict)
            self.journal.update(
                row.id,
                size=size,
                sha256=sha256,
                format=fmt,
                patient_id=patient_id,
                decision=decision.to_dict(),
            )
        else:
            decision = Decision.from_dict(row.decision)
            patient_id = row.patient_id or ""
            if row.sha256 and row.sha256 != sha256:
                event(
                    log, logging.WARNING, "claimed_file_changed", file=self.masker.path(row.source)
                )
                self.journal.update(row.id, sha256=sha256, size=size)
        if decision.action == "ignore":
            return self._ignore(row)
        if decision.action == "fail":
            raise rule_failure(decision)
        target = self.targets().get(decision.target)
        if target is None:
            event(log, logging.ERROR, "target_missing", target=decision.target)
            self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
            return Outcome("deferred", row.source)
        upload = Upload(
            patient_id=patient_id,
            file_name=row.source.name,
            mime=fmt,
            size=size,
            sha256=sha256,
            title=decision.title,
            doc_type=decision.doc_type,
            fields=dict(decision.fields),
            fd=fd,
        )
        check_before_upload(target, upload)
        return self._deliver(row, target, upload, resumed)

    def _deliver(self, row: Row, target: Target, upload: Upload, resumed: bool) -> Outcome:
        health = self.health(target.name)
        if health.paused_until > time.time():
            self.journal.update(row.id, next_attempt_at=health.paused_until)
            return Outcome("deferred", row.source)
        sends = 0

        def before_send() -> None:
            nonlocal sends
            sends += 1
            self.journal.update(row.id, state="uploading", attempts=row.attempts + sends)

        reconcile = resumed or row.state == "uploading" or row.outcome_unknown
        with health.slots:
            try:
                delivered = deliver(
                    target,
                    upload,
                    policy=self.policy,
                    reconcile_first=reconcile,
                    before_send=before_send,
                    should_stop=self.stopping.is_set,
                    sleep=self._pause,
                )
            except Deferred as exc:
                attempts = row.attempts + exc.attempts
                if health.pause(exc.retry_in, exc.reason):
                    event(
                        log,
                        logging.WARNING,
                        "target_paused",
                        target=target.name,
                        seconds=round(exc.retry_in, 1),
                        reason=exc.reason,
                    )
                self.journal.update(
                    row.id,
                    attempts=attempts,
                    outcome_unknown=exc.outcome_unknown,
                    state="uploading" if exc.outcome_unknown else "claimed",
                    next_attempt_at=time.time() + exc.retry_in,
                )
                event(
                    log,
                    logging.WARNING,
                    "upload_deferred",
                    file=self.masker.path(row.source),
                    target=target.name,
                    retry_in=round(exc.retry_in, 1),
                    reason=exc.reason,
                )
                return Outcome("deferred", row.source)
            except AuthError as exc:
                attempts = row.attempts + _attempts(exc)
                if health.pause(AUTH_PAUSE_SECONDS, exc.message, misconfigured=True):
                    event(
                        log,
                        logging.ERROR,
                        "target_misconfigured",
                        target=target.name,
                        reason=exc.message,
                        action="check the target's credentials; files wait until they are accepted",
                    )
                self.journal.update(
                    row.id, attempts=attempts, state="claimed", next_attempt_at=health.paused_until
                )
                return Outcome("deferred", row.source)
            except PermanentError as exc:
                self.journal.update(row.id, attempts=row.attempts + _attempts(exc))
                fresh = self.journal.get(row.id) or row
                kind = exc.kind if exc.kind in ("patient_not_found", "unreadable") else "rejected"
                return self._reject(fresh, Rejected(kind, _rejection_message(exc), exc.http_status))
            except TargetError as exc:
                self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
                event(log, logging.ERROR, "upload_error", target=target.name, reason=exc.message)
                return Outcome("deferred", row.source)
        if health.resume():
            event(log, logging.INFO, "target_resumed", target=target.name)
        self.journal.update(
            row.id,
            state="uploaded",
            document_id=delivered.document_id,
            attempts=row.attempts + delivered.attempts,
            outcome_unknown=False,
        )
        uploaded = self.journal.get(row.id)
        assert uploaded is not None
        return self.finish(uploaded)

    def _pause(self, seconds: float) -> None:
        """Backoff between retries that a shutdown cuts short."""
        self.stopping.wait(seconds)

    # --- outcomes --------------------------------------------------------------------------

    def _changed(self, row: Row) -> Outcome:
        """The file changed while being read: a writer still has it. Back to the inbox."""
        event(log, logging.WARNING, "file_still_changing", file=self.masker.path(row.source))
        if self.claimer.release(row):
            return Outcome("released", row.source)
        self.journal.update(row.id, next_attempt_at=time.time() + 5.0)
        return Outcome("deferred", row.source)

    def _ignore(self, row: Row) -> Outcome:
        if self.claimer.release(row):
            event(log, logging.INFO, "file_ignored", file=self.masker.path(row.source))
            return Outcome("ignored", row.source)
        self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
        return Outcome("deferred", row.source)

    def _reject(self, row: Row, exc: Rejected) -> Outcome:
        self.journal.update(row.id, state="rejected", error=exc.error)
        fresh = self.journal.get(row.id)
        assert fresh is not None
        return self.finish(fresh)

    def finish(self, row: Row) -> Outcome:
        """Move the file to done/ or failed/ and write its receipt; safe to repeat."""
        paths = self.config().paths
        status = "done" if row.state == "uploaded" else "failed"
        root = paths.done if status == "done" else paths.failed
        work = self.inbox / row.work
        try:
            for _ in range(100):
                if row.dest is None:
                    parent = row.source.parent
                    name = free_name(root / parent, row.source.name)
                    self.journal.update(row.id, dest=parent / name, finished_at=utc_now())
                    row = self.journal.get(row.id) or row
                assert row.dest is not None
                dest = root / row.dest
                if os.path.lexists(work):
                    try:
                        place(work, dest)
                    except FileExistsError:
                        self.journal.update(row.id, dest=None)
                        row = self.journal.get(row.id) or row
                        continue
                try:
                    write_receipt(receipt_path(dest), self.receipt(row, status, dest.name))
                except FileExistsError:
                    # Someone put a different receipt there by hand: keep ours beside it.
                    self._move_aside(row, dest, root)
                    row = self.journal.get(row.id) or row
                    continue
                break
        except OSError as exc:
            event(
                log,
                logging.ERROR,
                "filing_failed",
                file=self.masker.path(row.source),
                folder=status,
                reason=exc.strerror,
                action="check free space and permissions; the file waits and is retried",
            )
            self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
            return Outcome("deferred", row.source)
        self.journal.update(row.id, state=status)
        error = row.error or {}
        event(
            log,
            logging.INFO if status == "done" else logging.WARNING,
            f"file_{status}",
            file=self.masker.path(row.source),
            patient=self.masker.patient(row.patient_id) if row.patient_id else None,
            target=(row.decision or {}).get("target"),
            attempts=row.attempts,
            kind=error.get("kind"),
            http_status=error.get("http_status"),
        )
        return Outcome(status, row.source)

    def _move_aside(self, row: Row, dest: Path, root: Path) -> None:
        assert row.dest is not None
        name = free_name(dest.parent, row.source.name)
        with contextlib.suppress(FileNotFoundError):
            place(dest, dest.parent / name)
        self.journal.update(row.id, dest=row.dest.parent / name)

    def receipt(self, row: Row, status: str, file_name: str) -> dict[str, Any]:
        decision = row.decision or {}
        receipt: dict[str, Any] = {"status": status}
        if status == "done":
            receipt["document_id"] = row.document_id
        receipt.update(
            target=decision.get("target"),
            patient_id=row.patient_id,
            source=str(row.source),
            file=file_name,
            sha256=row.sha256,
            size=row.size,
            format=row.format or None,
            title=decision.get("title"),
            type=decision.get("doc_type"),
            rule=decision.get("rule"),
            rule_line=decision.get("rule_line"),
            attempts=row.attempts,
            received_at=row.received_at,
            finished_at=row.finished_at,
        )
        if status == "failed":
            receipt["error"] = row.error
        if row.history:
            receipt["history"] = row.history
        return receipt


def _attempts(exc: Exception) -> int:
    value = getattr(exc, "attempts", 0)
    return value if isinstance(value, int) else 0


def _rejection_message(exc: PermanentError) -> str:
    if exc.kind == "unreadable":
        return f"{exc.message}; check the file and its permissions, then `ingestd retry`"
    if exc.kind == "patient_not_found":
        return (
            f"the EHR does not know this patient (HTTP {exc.http_status}): check the patient "
            "folder's name or mapping, move the file to the right folder, then `ingestd retry`"
        )
    return (
        f"the EHR refused the document (HTTP {exc.http_status}): {exc.message}; fix the file or "
        "the rule, then `ingestd retry`"
    )
