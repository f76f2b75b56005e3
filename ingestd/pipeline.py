"""The pipeline: what happens to one claimed file, from reading it to its receipt.

    read (one descriptor) → decide (rules, recorded in the journal) → local checks →
    deliver (retrying) → file into done/ or failed/ with a receipt

Each step commits its state to the journal before the side effect that follows, so `process`
can be called again on any row after a crash and carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import pwd
import stat
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
from ingestd.health import TargetHealth
from ingestd.journal import Journal, Row
from ingestd.logs import Masker, event
from ingestd.metrics import Metrics
from ingestd.names import valid_text
from ingestd.receipts import receipt_path, utc_now, write_receipt
from ingestd.retrying import Deferred, RetryPolicy, deliver
from ingestd.rules import Decision
from ingestd.shares import is_unavailable
from ingestd.targets.base import (
    AuthError,
    PermanentError,
    Target,
    TargetError,
    TransientError,
    Upload,
)

log = logging.getLogger("ingestd.pipeline")

FILING_RETRY_SECONDS = 5.0  # a full or read-only disk: one cheap try every few seconds
MAX_NAME_TRIES = 100
PROBE_POLICY = RetryPolicy(max_sends=1)
UNKNOWN_OUTCOME_WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class Outcome:
    """What `process` did: done | failed | deferred | released | ignored | gone."""

    result: str
    rel: PurePosixPath


# What is left to do with a file once it is closed: moves wait for the close (SMB refuses to
# delete an open file).
Step = Outcome | Callable[[], Outcome]


@dataclass
class Pipeline:
    config: Callable[[], Config]
    journal: Journal
    claimer: Claimer
    targets: Callable[[], dict[str, Target]]
    health: Callable[[str], TargetHealth]
    masker: Masker
    stopping: threading.Event
    target_up: Callable[[str], None] = lambda name: None  # the backlog of `name` may go now
    # Held by a reload while it swaps targets and makes waiting files due.
    reloading: threading.Lock = field(default_factory=threading.Lock)
    metrics: Metrics = field(default_factory=Metrics)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Destination folders that failed: logged once per spell of trouble, under _filing_lock.
    _filing_trouble: set[PurePosixPath] = field(default_factory=set)
    _filing_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def inbox(self) -> Path:
        return self.config().paths.inbox

    # --- one file --------------------------------------------------------------------------

    def process(self, row: Row, resumed: bool = False) -> Outcome:
        if row.state in ("uploaded", "rejected"):
            return self.finish(row)
        wait = self._target_wait(row)
        if wait is not None:
            # Its target is paused: do not even read the file (an outage can hold thousands).
            self.journal.update(row.id, next_attempt_at=wait)
            return Outcome("deferred", row.source)
        work = self.inbox / row.work
        try:
            fd, before = content.open_regular(work)
        except FileNotFoundError:
            if not self._work_folder_present():
                # The inbox share is gone (unmounted, offline): wait for it, forget nothing.
                self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
                return Outcome("deferred", row.source)
            # Taken over by another instance after our lease ran out, or removed by hand.
            event(log, logging.WARNING, "claimed_file_missing", file=self.masker.path(row.source))
            self.journal.delete(row.id)
            return Outcome("gone", row.source)
        except content.UnsafeFile as exc:
            # Never opened, or not readable: the size lstat gives, and no hash.
            rejected = Rejected(exc.kind, f"{row.source.name} {exc.message}")
            return self._reject(row, rejected, size=_lstat_size(work))
        except OSError as exc:
            if not is_unavailable(exc):
                raise
            # The inbox's share stopped answering: the daemon pauses it; this file waits.
            self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
            return Outcome("deferred", row.source)
        try:
            step = self._process_open(row, fd, before, resumed)
        except Rejected as exc:
            rejected_row = self._rejected(row, exc, content.StreamedDigest(fd), size=before.st_size)
            step = functools.partial(self.finish, rejected_row)
        finally:
            # Closed before any move: SMB refuses to delete an open file (EBUSY).
            os.close(fd)
        return step() if callable(step) else step

    def _work_folder_present(self) -> bool:
        try:
            return self.claimer.work_folder_present()
        except OSError:
            return False

    def _target_wait(self, row: Row) -> float | None:
        name = (row.decision or {}).get("target")
        if not name or row.decision is None or row.decision.get("action") != "upload":
            return None
        try:
            return self.health(str(name)).waiting_until()
        except KeyError:
            return None

    def _process_open(self, row: Row, fd: int, before: os.stat_result, resumed: bool) -> Step:
        """What to do with an open claimed file; moves (filing, giving back) are returned as
        a step to run once the file is closed."""
        # The hash is taken while the upload reads the file (Upload.sha256), not beforehand.
        size = before.st_size
        # Detected when the file settled (same inode, size and mtime), or now.
        fmt = row.format if row.format is not None else content.detect_format(fd)
        if row.decision is None:
            patient_id, verdict = evaluate(
                self.config(),
                row.source,
                fmt,
                size,
                mtime=datetime.fromtimestamp(before.st_mtime, UTC),
                received=datetime.fromisoformat(row.received_at.replace("Z", "+00:00")),
            )
            decision = decision_of(verdict)
            row = self.journal.change(
                row,
                state="claimed",
                size=size,
                format=fmt,
                patient_id=patient_id,
                decision=decision.to_dict(),
            )
        else:
            decision = Decision.from_dict(row.decision)
            patient_id = row.patient_id or ""
            if row.sha256 and row.sha256 != content.StreamedDigest(fd).hexdigest():
                # Resumed after the content was recorded, and it is not what it was.
                event(
                    log, logging.WARNING, "claimed_file_changed", file=self.masker.path(row.source)
                )
                row = self.journal.change(row, sha256=None, size=size)
        if _changed_since(before, fd):
            return functools.partial(self._changed, row)
        if decision.action == "ignore":
            return functools.partial(self._ignore, row)
        if decision.action == "fail":
            raise rule_failure(decision)
        target = self.targets().get(decision.target)
        if target is None:
            event(log, logging.ERROR, "target_missing", target=decision.target)
            self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
            return Outcome("deferred", row.source)
        upload = Upload(
            patient_id=patient_id,
            file_name=valid_text(row.source.name),
            mime=fmt,
            size=size,
            known_sha256=row.sha256,
            title=decision.title,
            doc_type=decision.doc_type,
            fields=dict(decision.fields),
            fd=fd,
            not_before=_epoch(row.received_at),
        )
        check_before_upload(target, upload)
        return self._deliver(row, target, upload, resumed, before)

    def _deliver(
        self, row: Row, target: Target, upload: Upload, resumed: bool, before: os.stat_result
    ) -> Step:
        health = self.health(target.name)
        go, probe, wait_until = health.admit()
        if not go:
            self.journal.update(row.id, next_attempt_at=wait_until)
            return Outcome("deferred", row.source)
        try:
            return self._send(row, target, upload, resumed, before, health, probe)
        finally:
            if probe:
                # Whatever happened — an answer (succeeded/failed already ended the probe), a
                # look-up too early to resend, an error of ours — this file's probe is over;
                # a probe nobody holds would hold the target's whole backlog for good.
                health.released()

    def _send(
        self,
        row: Row,
        target: Target,
        upload: Upload,
        resumed: bool,
        before: os.stat_result,
        health: TargetHealth,
        probe: bool,
    ) -> Step:
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

        reconcile = resumed or row.state == "uploading" or row.outcome_unknown
        if reconcile and row.sent_at is not None:
            early = self._too_early_to_resend(row, target, upload, health)
            if early is not None:
                return early
        started = time.monotonic()

        def finished(outcome: str, size: int = 0) -> None:
            self.metrics.finished(target.name, outcome, time.monotonic() - started, size)

        with health.slots:
            try:
                delivered = deliver(
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
                    sleep=self._pause,
                    on_retry=retrying,
                )
            except Deferred as exc:
                finished("deferred")
                return self._wait(row, target, health, exc)
            except AuthError as exc:
                finished("credentials_refused")
                return self._refused_credentials(row, target, health, exc)
            except PermanentError as exc:
                finished("rejected")
                self._target_answered(health)
                row = self.journal.change(row, attempts=row.attempts + _attempts(exc))
                kind = exc.kind if exc.kind in _EHR_KINDS else "rejected"
                rejected = Rejected(kind, _rejection_message(exc, target), exc.http_status)
                return functools.partial(self.finish, self._rejected(row, rejected, upload.digest))
            except TargetError as exc:
                finished("error")
                health.released()
                self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
                event(log, logging.ERROR, "upload_error", target=target.name, reason=exc.message)
                return Outcome("deferred", row.source)
        finished("found" if delivered.found_existing else "done", upload.size)
        self._target_answered(health)
        if _changed_since(before, upload.fd):
            event(
                log,
                logging.WARNING,
                "file_changed_while_sent",
                file=self.masker.path(row.source),
                target=target.name,
                action="a writer still had the file; compare the EHR's document with the "
                "file in done/ (the receipt's sha256 is that of the bytes sent)",
            )
        uploaded = self.journal.change(
            row,
            state="uploaded",
            document_id=delivered.document_id,
            attempts=row.attempts + delivered.attempts,
            outcome_unknown=False,
            **self._content_values(row, upload.sha256),
            **self._destination(row, "done"),
        )
        return functools.partial(self.finish, uploaded)

    def _too_early_to_resend(
        self, row: Row, target: Target, upload: Upload, health: TargetHealth
    ) -> Step | None:
        """A send whose outcome is unknown may still be in the EHR's hands (the process died
        mid-request; the EHR may store it seconds later). Ask at once — usually it is there —
        but if not, wait until that send must be over before asking again and sending."""
        assert row.sent_at is not None
        settled_at = row.sent_at + min(target.timeout_seconds, UNKNOWN_OUTCOME_WAIT_SECONDS)
        if time.time() >= settled_at:
            return None
        try:
            found = target.find(upload)
        except TargetError:
            found = None
        else:
            self._target_answered(health)  # an answer, found or not: the EHR is up
        if found is not None:
            uploaded = self.journal.change(
                row,
                state="uploaded",
                document_id=found,
                outcome_unknown=False,
                **self._content_values(row, upload.sha256),
                **self._destination(row, "done"),
            )
            return functools.partial(self.finish, uploaded)
        self.journal.update(row.id, next_attempt_at=settled_at)
        return Outcome("deferred", row.source)

    def _refused_credentials(
        self, row: Row, target: Target, health: TargetHealth, exc: AuthError
    ) -> Outcome:
        """Credentials refused (401) or a certificate that does not verify: the target pauses
        as misconfigured (one loud line saying what to do); the file waits."""
        if not self._current(target):
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
        sent = _attempts(exc)
        unsent: dict[str, Any] = {} if sent else {"state": row.state, "sent_at": row.sent_at}
        with self.reloading:
            self.journal.update(
                row.id,
                attempts=row.attempts + sent,
                next_attempt_at=self._retry_at(target, health.paused_until),
                **unsent,
            )
        return Outcome("deferred", row.source)

    def _current(self, target: Target) -> bool:
        """False when a reload replaced this target while a file was being sent with it."""
        return self.targets().get(target.name) is target

    def _retry_at(self, target: Target, when: float) -> float:
        """When to try again; at once if a reload replaced this target meanwhile (new
        credentials or URL deserve a try now, not after the old target's pause). Called with
        `reloading` held, so a reload cannot slip between this check and the journal write."""
        return when if self._current(target) else time.time()

    def _wait(self, row: Row, target: Target, health: TargetHealth, exc: Deferred) -> Outcome:
        """Transient trouble outlasted the retries: the file waits in the journal."""
        if self.stopping.is_set() or not self._current(target):
            health.released()  # shutting down, or a reload replaced the target: not an outage
            next_attempt = time.time()
        else:
            if health.failed(exc.retry_in, exc.reason):
                event(
                    log,
                    logging.WARNING,
                    "target_unavailable",
                    target=health.name,
                    reason=exc.reason,
                    action="files wait and are sent when it answers again",
                )
            next_attempt = health.paused_until
        with self.reloading:
            next_attempt = self._retry_at(target, next_attempt)
            self.journal.update(
                row.id,
                attempts=row.attempts + exc.attempts,
                outcome_unknown=exc.outcome_unknown,
                state="uploading" if exc.outcome_unknown else "claimed",
                next_attempt_at=next_attempt,
            )
        event(
            log,
            logging.WARNING,
            "upload_deferred",
            file=self.masker.path(row.source),
            target=health.name,
            retry_in=round(max(0.0, next_attempt - time.time()), 1),
            reason=exc.reason,
        )
        return Outcome("deferred", row.source)

    def _target_answered(self, health: TargetHealth) -> None:
        if health.succeeded():
            event(log, logging.INFO, "target_available", target=health.name)
            self.target_up(health.name)

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

    def _reject(self, row: Row, exc: Rejected, size: int | None = None) -> Outcome:
        return self.finish(self._rejected(row, exc, size=size))

    def _rejected(
        self,
        row: Row,
        exc: Rejected,
        digest: content.StreamedDigest | None = None,
        size: int | None = None,
    ) -> Row:
        """The row of a rejected file, its content recorded while it is still open."""
        fresh = self.journal.get(row.id) or row  # `row` may predate the recorded decision
        values: dict[str, Any] = {}
        if fresh.size is None and size is not None:
            values["size"] = size  # refused before the decision recorded it
        if fresh.sha256 is None and digest is not None:
            with contextlib.suppress(OSError):  # an unreadable file's receipt says so
                values.update(self._content_values(fresh, digest.hexdigest()))
        values.update(self._destination(fresh, "failed"))
        return self.journal.change(fresh, state="rejected", error=exc.error, **values)

    def _content_values(self, row: Row, sha256: str) -> dict[str, Any]:
        """Journal columns for a file's content once it is known. A file put back by
        `ingestd retry` takes the receipts of its earlier tries along."""
        values: dict[str, Any] = {"sha256": sha256}
        if row.sha256 != sha256:
            history = self.journal.take_retried(row.source, sha256)
            if history is not None:
                values["history"] = history
        return values

    def finish(self, row: Row) -> Outcome:
        """Move the file to done/ or failed/ and write its receipt; safe to repeat."""
        status = "done" if row.state == "uploaded" else "failed"
        folder = PurePosixPath(status) / row.source.parent
        try:
            row = self._file_away(row, status)
        except OSError as exc:
            with self._filing_lock:
                starting = folder not in self._filing_trouble
                self._filing_trouble.add(folder)
            if starting:
                event(
                    log,
                    logging.ERROR,
                    "filing_failed",
                    folder=self.masker.path(folder),
                    reason=exc.strerror or type(exc).__name__,
                    action="check free space, permissions and the folder; files stay claimed "
                    "and are filed when it works again",
                )
            self.journal.update(row.id, next_attempt_at=time.time() + FILING_RETRY_SECONDS)
            return Outcome("deferred", row.source)
        with self._filing_lock:
            recovered = folder in self._filing_trouble
            self._filing_trouble.discard(folder)
        if recovered:
            event(log, logging.INFO, "filing_recovered", folder=self.masker.path(folder))
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

    def _file_away(self, row: Row, status: str) -> Row:
        """Place the work file under a free name and write the receipt beside it; every step
        is recorded first, so a crash anywhere repeats it without overwriting anything."""
        root = self._root(status)
        work = self.inbox / row.work
        for _ in range(MAX_NAME_TRIES):
            if row.dest is None:
                row = self.journal.change(row, **self._destination(row, status))
            assert row.dest is not None
            dest = root / row.dest
            if os.path.lexists(work):
                try:
                    # The receipt's write syncs the folder for both names.
                    place(work, dest, sync=False)
                except FileExistsError:
                    if not _our_copy(work, dest, row.sha256):
                        # The name was taken since it was chosen.
                        row = self.journal.change(row, dest=None)
                        continue
                    # An earlier try put it there but could not remove the work file.
                    os.unlink(work)
            try:
                write_receipt(receipt_path(dest), self.receipt(row, status, dest.name))
            except FileExistsError:
                # Someone put a different receipt there by hand: keep ours beside it.
                row = self._move_aside(row, dest)
                continue
            return row
        raise OSError(errno.EEXIST, "no free name in the folder")

    def _root(self, status: str) -> Path:
        paths = self.config().paths
        return paths.done if status == "done" else paths.failed

    def _destination(self, row: Row, status: str) -> dict[str, Any]:
        """Journal columns naming where the file is filed: chosen with the outcome it is
        recorded with, so filing needs no journal write of its own before the move."""
        if row.dest is not None:
            return {}
        parent = row.source.parent
        name = free_name(self._root(status) / parent, row.source.name)
        return {"dest": parent / name, "finished_at": utc_now()}

    def _move_aside(self, row: Row, dest: Path) -> Row:
        assert row.dest is not None
        name = free_name(dest.parent, row.source.name)
        with contextlib.suppress(FileNotFoundError):
            place(dest, dest.parent / name)
        return self.journal.change(row, dest=row.dest.parent / name)

    def receipt(self, row: Row, status: str, file_name: str) -> dict[str, Any]:
        decision = row.decision or {}
        receipt: dict[str, Any] = {"status": status}
        if status == "done":
            receipt["document_id"] = row.document_id
        receipt.update(
            target=decision.get("target") or None,  # a fail: rule names none
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
            dropped_by=_owner(row.owner_uid),
            attempts=row.attempts,
            received_at=row.received_at,
            finished_at=row.finished_at,
        )
        if status == "failed":
            receipt["error"] = row.error
        if row.history:
            receipt["history"] = row.history
        return receipt


def _epoch(iso_time: str) -> float | None:
    """Epoch seconds of a journal time (`received_at`); None if it cannot be read."""
    try:
        return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _lstat_size(path: Path) -> int | None:
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


def _changed_since(before: os.stat_result, fd: int) -> bool:
    after = os.fstat(fd)
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def _owner(uid: int | None) -> dict[str, Any] | None:
    """Who dropped the file: its owner when it was claimed."""
    if uid is None:
        return None
    return {"uid": uid, "user": _user_name(uid)}


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str | None:
    # Cached: getpwuid reads /etc/passwd (or asks NSS) each time, for every file filed.
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _attempts(exc: Exception) -> int:
    value = getattr(exc, "attempts", 0)
    return value if isinstance(value, int) else 0


_EHR_KINDS = frozenset({"patient_not_found", "unreadable", "too_large"})


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
        return (
            f"the EHR does not know this patient (HTTP {exc.http_status}): check the patient "
            "folder's name or mapping, move the file to the right folder, then `ingestd retry`"
        )
    return (
        f"the EHR refused the document (HTTP {exc.http_status}): {exc.message}; fix the file or "
        "the rule, then `ingestd retry`"
    )


def _our_copy(work: Path, dest: Path, sha256: str | None) -> bool:
    """Whether `dest` is the copy an interrupted move of `work` already made: the same file
    (a link), or the same size and SHA-256, with no receipt beside it yet."""
    try:
        st_work, st_dest = os.lstat(work), os.lstat(dest)
        if os.path.samestat(st_work, st_dest):
            return True
        if os.path.lexists(receipt_path(dest)) or st_work.st_size != st_dest.st_size:
            return False
        if not (stat.S_ISREG(st_work.st_mode) and stat.S_ISREG(st_dest.st_mode)):
            return False
        digests = {_sha256_of(work), _sha256_of(dest)}
    except OSError:
        return False
    return len(digests) == 1 and (sha256 is None or sha256 in digests)


def _sha256_of(path: Path) -> str:
    fd, _ = content.open_regular(path)
    try:
        return content.StreamedDigest(fd).hexdigest()
    finally:
        os.close(fd)
