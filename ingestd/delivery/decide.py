"""What ingestd decides about one file: reading it (one descriptor, typed by content), its
patient, its rule, and the checks before any upload.

Shared by the daemon's intake (an `ignore` rule is judged before claiming), the pipeline (a real
upload) and `ingestd explain` (no side effects), so what explain shows is what an upload does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.config.model import Config
from ingestd.names import patient_folder
from ingestd.rules.conversion import with_target_default
from ingestd.rules.matching import Decision, Facts, Verdict, first_match
from ingestd.targets.base import Target, Upload

RECOGNISED = "PDF, TIFF, JPEG, PNG, DOCX, DICOM or text"


class Rejected(Exception):
    """This file goes to failed/: `kind` is a receipt error kind, `message` says what to do."""

    def __init__(self, kind: str, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.error: dict[str, Any] = {"kind": kind, "message": message}
        if http_status is not None:
            self.error["http_status"] = http_status


def patient_of(config: Config, rel: PurePosixPath) -> str:
    """The patient id for an inbox-relative path; Rejected when there is none."""
    folder = patient_folder(rel)
    if folder is None:
        raise Rejected(
            "no_patient_folder",
            "the file was put directly in the inbox; put it in the patient's folder "
            "(inbox/<patient>/), then `ingestd retry`",
        )
    patient_id = config.patients.patient_id(folder)
    if not patient_id:
        raise Rejected(
            "invalid_patient_id",
            "the patient folder has no patient id mapping; add it under `patients:` in the "
            "config, then `ingestd retry`",
        )
    return patient_id


def evaluate(
    config: Config,
    rel: PurePosixPath,
    fmt: str,
    size: int,
    mtime: datetime,
    received: datetime,
) -> tuple[str, Verdict]:
    """The patient id and the rules' verdict (which rule matched, why earlier ones did not)."""
    patient_id = patient_of(config, rel)
    facts = Facts(
        rel_path=rel, patient_id=patient_id, format=fmt, size=size, mtime=mtime, received=received
    )
    return patient_id, first_match(config.rules, facts)


@dataclass(frozen=True)
class Reading:
    """A file opened for deciding: its one descriptor, what `fstat` said, its detected type."""

    fd: int
    stat: os.stat_result
    format: str


def open_reading(path: Path, known_format: str | None = None) -> Reading:
    """Open `path` safely (content.open_regular: raises OSError or UnsafeFile) and type it by
    content, unless the type is already known (detected when the file settled). The caller
    closes `fd`."""
    fd, st = content.open_regular(path)
    try:
        fmt = known_format if known_format is not None else content.detect_format(fd)
    except BaseException:
        os.close(fd)
        raise
    return Reading(fd, st, fmt)


@contextlib.contextmanager
def reading(path: Path, known_format: str | None = None) -> Iterator[Reading]:
    """`open_reading` for a `with` block that closes the descriptor."""
    read = open_reading(path, known_format)
    try:
        yield read
    finally:
        os.close(read.fd)


def judge(
    config: Config, rel: PurePosixPath, read: Reading, received: datetime
) -> tuple[str, Verdict]:
    """`evaluate` for a file being read: its size and mtime from the descriptor."""
    mtime = datetime.fromtimestamp(read.stat.st_mtime, UTC)
    return evaluate(config, rel, read.format, read.stat.st_size, mtime=mtime, received=received)


def decision_of(verdict: Verdict) -> Decision:
    if verdict.decision is None:
        raise Rejected(
            "no_rule",
            "no rule matches this file; add a rule (or a catch-all) to the config, check it "
            "with `ingestd explain`, then `ingestd retry`",
        )
    return verdict.decision


def decision_for(config: Config, verdict: Verdict, fmt: str) -> Decision:
    """The decision recorded for a claimed file: its rule's, converting to PDF when the
    rule's target lists the detected format in `convert_to_pdf`."""
    decision = decision_of(verdict)
    settings = config.targets.get(decision.target)
    converts = settings.common.convert_to_pdf if settings is not None else frozenset()
    return with_target_default(decision, fmt, converts)


def rule_failure(decision: Decision) -> Rejected:
    """The refusal a `fail:` rule gives."""
    return Rejected("rule_failed", decision.message or f"rule '{decision.rule}' fails this file")


def check_before_upload(target: Target, upload: Upload) -> None:
    """Everything decided locally before a request: a recognised type, and the target's size,
    type and patient-id limits. Raises Rejected; sends nothing."""
    if not upload.mime:
        raise Rejected(
            "unsupported_type",
            f"the content of {upload.file_name} is not a recognised document type ({RECOGNISED}); "
            "re-scan or convert it, then `ingestd retry`",
        )
    refusal = target.refusal(upload)
    if refusal is not None:
        raise Rejected(refusal.kind, refusal.message)
