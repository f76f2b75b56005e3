"""The pipeline: what happens to one claimed file, from reading it to its receipt.

    read (one descriptor) → decide (rules, recorded in the journal) → local checks →
    send (delivery.send) → file into done/ or failed/ with a receipt (filing.filer)

Each step commits its state to the journal before the side effect that follows, so `process`
can be called again on any row after a crash and carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.config.model import Config
from ingestd.delivery.decide import (
    Reading,
    Rejected,
    check_before_upload,
    decision_for,
    judge,
    open_reading,
    rule_failure,
)
from ingestd.delivery.fleet import Fleet
from ingestd.delivery.retrying import Delivered, RetryPolicy
from ingestd.delivery.send import RETRY_SOON_SECONDS, Sender
from ingestd.delivery.staged import Stager
from ingestd.filing.filer import Filer
from ingestd.inbox.claims import Claimer, claim_key
from ingestd.journal import ClaimLost, JournalLike, Row
from ingestd.names import valid_text
from ingestd.observe.logs import Masker, event
from ingestd.observe.metrics import Metrics
from ingestd.rules.conversion import PDF, converts, pdf_name
from ingestd.rules.matching import Decision
from ingestd.targets.base import Target, Upload
from ingestd.unreachable import errno_name, is_unavailable

log = logging.getLogger("ingestd.pipeline")


@dataclass(frozen=True)
class Outcome:
    """What `process` did: done | failed | deferred | released | ignored | gone."""

    result: str
    rel: PurePosixPath


# What is left to do with a file once it is closed: moves wait for the close (SMB refuses to
# delete an open file).
Step = Outcome | Callable[[], Outcome]


class Pipeline:
    def __init__(
        self,
        config: Callable[[], Config],
        journal: JournalLike,
        claimer: Claimer,
        fleet: Fleet,
        masker: Masker,
        stopping: threading.Event,
        metrics: Metrics,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.claimer = claimer
        self.fleet = fleet
        self.masker = masker
        self.sender = Sender(journal, fleet, masker, metrics, stopping, policy or RetryPolicy())
        self.filer = Filer(
            inbox=lambda: config().paths.inbox,
            roots=lambda: (config().paths.done, config().paths.failed),
            journal=journal,
            masker=masker,
            instance=claimer.instance,
        )
        self.stager = Stager(lambda: config().paths.state.parent, journal, masker, metrics)
        self._unreadable: set[int] = set()  # rows whose unanswered read was logged once
        self.stager.sweep()

    def process(self, row: Row, resumed: bool = False) -> Outcome:
        try:
            return self._process(row, resumed)
        except ClaimLost:
            # The survivor that took the row over chooses its own name and makes its own PDF.
            self.filer.forget(row.id)
            self.stager.remove(row)
            raise

    def _process(self, row: Row, resumed: bool) -> Outcome:
        if row.state in ("uploaded", "rejected"):
            return self.finish(row)
        wait = self._target_wait(row)
        if wait is not None:
            # Its target is paused: do not even read the file (an outage can hold thousands).
            return self._defer(row, wait)
        work = self.config().paths.inbox / row.work
        try:
            read = open_reading(work, row.format)
        except FileNotFoundError:
            if not self._work_folder_present():
                # The inbox share is gone (unmounted, offline): wait for it, forget nothing.
                return self._defer(row, time.time() + RETRY_SOON_SECONDS)
            # Taken over by another instance after our lease ran out, or removed by hand.
            event(log, logging.WARNING, "claimed_file_missing", file=self.masker.path(row.source))
            self.journal.delete(row.id)
            self.stager.remove(row)
            return Outcome("gone", row.source)
        except content.UnsafeFile as exc:
            # Never opened, or not readable: the size lstat gives, and no hash.
            rejected = Rejected(exc.kind, f"{row.source.name} {exc.message}")
            return self._reject(row, rejected, size=_lstat_size(work))
        except OSError as exc:
            if not is_unavailable(exc):
                raise
            # The inbox's share stopped answering (the daemon pauses it when the folder does),
            # or this one file does not (a bad block): it waits, and says so once.
            if row.id not in self._unreadable and len(self._unreadable) < 10_000:
                self._unreadable.add(row.id)
                event(
                    log,
                    logging.WARNING,
                    "claimed_file_unreadable",
                    file=self.masker.path(row.source),
                    errno=errno_name(exc),
                    action="it waits in the work folder and is tried again every few seconds",
                )
            return self._defer(row, time.time() + RETRY_SOON_SECONDS)
        try:
            step = self._process_open(row, read, resumed)
        except Rejected as exc:
            digest = content.StreamedDigest(read.fd)
            rejected_row = self._rejected(row, exc, digest, size=read.stat.st_size)
            step = functools.partial(self.finish, rejected_row)
        finally:
            # Closed before any move: SMB refuses to delete an open file (EBUSY).
            os.close(read.fd)
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
            return self.fleet.health(str(name)).waiting_until()
        except KeyError:
            return None

    def _process_open(self, row: Row, read: Reading, resumed: bool) -> Step:
        """What to do with an open claimed file; moves (filing, giving back) are returned as
        a step to run once the file is closed."""
        # The hash is taken while the upload reads the file (Upload.sha256), not beforehand.
        before, fd = read.stat, read.fd
        if row.decision is None:
            received = datetime.fromisoformat(row.received_at.replace("Z", "+00:00"))
            patient_id, verdict = judge(self.config(), row.source, read, received)
            decision = decision_for(self.config(), verdict, read.format)
            # Staged, not written: it goes with the row's next write (`uploading` before the
            # send, or a wait), one round trip fewer per file; a crash before that decides again.
            row = self.journal.stage(
                row,
                state="claimed",
                size=before.st_size,
                format=read.format,
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
                row = self.journal.change(
                    row, sha256=None, size=before.st_size, converted_sha256=None
                )
        if _changed_since(before, fd):
            return functools.partial(self._changed, row)
        if decision.action == "ignore":
            return functools.partial(self._ignore, row)
        if decision.action == "fail":
            raise rule_failure(decision)
        target = self.fleet.get(decision.target)
        if target is None:
            event(log, logging.ERROR, "target_missing", target=decision.target)
            return self._defer(row, time.time() + RETRY_SOON_SECONDS)
        upload = Upload(
            patient_id=patient_id,
            file_name=valid_text(row.source.name),
            mime=read.format,
            size=before.st_size,
            known_sha256=row.sha256,
            title=decision.title,
            doc_type=decision.doc_type,
            fields=dict(decision.fields),
            fd=fd,
            not_before=_epoch(row.received_at),
            key=claim_key(row.work),
        )
        if not converts(decision, read.format):
            return self._send(row, target, upload, resumed, read)
        # Sent as a PDF made from it: the source's hash first (its receipt and retry history),
        # then the PDF, each committed before the first send.
        row = self.journal.change(row, **self._content_values(row, upload.sha256))
        row, pdf = self.stager.prepare(row, fd, before.st_size, read.format)
        try:
            sent = dataclasses.replace(
                upload, file_name=pdf_name(upload.file_name), mime=PDF, size=pdf.size,
                fd=pdf.fd, known_sha256=pdf.sha256,
            )  # fmt: skip
            return self._send(row, target, sent, resumed, read)
        finally:
            os.close(pdf.fd)

    def _send(self, row: Row, target: Target, upload: Upload, resumed: bool, read: Reading) -> Step:
        check_before_upload(target, upload)
        result = self.sender.send(row, target, upload, resumed)
        if isinstance(result, Rejected):
            return functools.partial(self.finish, self._rejected(row, result, upload.digest))
        if result is None:
            return Outcome("deferred", row.source)
        # The hash of the file kept in done/: for a converted file, recorded before sending.
        sha256 = row.sha256 if row.converted_sha256 and row.sha256 else upload.sha256
        return self._uploaded(row, result, sha256, read)

    def _uploaded(self, row: Row, delivered: Delivered, sha256: str, read: Reading) -> Step:
        if _changed_since(read.stat, read.fd):
            event(
                log,
                logging.WARNING,
                "file_changed_while_sent",
                file=self.masker.path(row.source),
                target=(row.decision or {}).get("target"),
                action="a writer still had the file; compare the EHR's document with the "
                "file in done/ (the receipt's sha256 is that of the bytes sent)",
            )
        uploaded = self.journal.change(
            row,
            state="uploaded",
            document_id=delivered.document_id,
            attempts=row.attempts + delivered.attempts,
            outcome_unknown=False,
            **self._content_values(row, sha256),
            **self.filer.destination(row, "done"),
        )
        return functools.partial(self.finish, uploaded)

    # --- outcomes --------------------------------------------------------------------------

    def _defer(self, row: Row, until: float) -> Outcome:
        self.journal.update(row.id, next_attempt_at=until)
        return Outcome("deferred", row.source)

    def _changed(self, row: Row) -> Outcome:
        """The file changed while being read: a writer still has it. Back to the inbox."""
        event(log, logging.WARNING, "file_still_changing", file=self.masker.path(row.source))
        if self.claimer.release(row):
            self.stager.remove(row)  # claimed again later under a new row, converted anew
            return Outcome("released", row.source)
        return self._defer(row, time.time() + RETRY_SOON_SECONDS)

    def _ignore(self, row: Row) -> Outcome:
        if self.claimer.release(row):
            event(log, logging.INFO, "file_ignored", file=self.masker.path(row.source))
            return Outcome("ignored", row.source)
        return self._defer(row, time.time() + RETRY_SOON_SECONDS)

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
        values.update(self.filer.destination(fresh, "failed"))
        return self.journal.change(fresh, state="rejected", error=exc.error, **values)

    def _content_values(self, row: Row, sha256: str) -> dict[str, Any]:
        """Journal columns for a file's content once it is known. A file put back by
        `ingestd retry` takes the receipts of its earlier tries along."""
        values: dict[str, Any] = {"sha256": sha256}
        if row.sha256 != sha256 and row.retried:
            history = self.journal.take_retried(row.source, sha256)
            if history is not None:
                values["history"] = history
        return values

    def finish(self, row: Row) -> Outcome:
        """Move the file to done/ or failed/ and write its receipt; safe to repeat."""
        status = self.filer.finish(row)
        if status is None:
            return self._defer(row, time.time() + RETRY_SOON_SECONDS)
        if (row.decision or {}).get("convert"):
            self.stager.remove(row)
        return Outcome(status, row.source)


def _changed_since(before: os.stat_result, fd: int) -> bool:
    after = os.fstat(fd)
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


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
