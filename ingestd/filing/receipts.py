"""Receipts: the JSON record beside every file in done/ or failed/ — its schema (`Receipt`, built
from a journal row, read back by `ingestd retry`) and its writing, atomically, never over
another file.

A receipt is written to a hidden temporary name in the same folder, fsynced, then hard-linked to
its final name (which fails instead of overwriting; without hard links, a rename that cannot
overwrite or an exclusive copy: see moves.py), and the folder is fsynced: a reader sees either no
receipt or a whole one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestd.filing.moves import move_no_replace, new_file
from ingestd.journal import Row

SUFFIX = ".receipt.json"
FILE_MODE = 0o640

# Receipt errors: the contract's kinds (an extension never reuses one of these names).
ERROR_KINDS = frozenset(
    {
        "no_patient_folder",
        "invalid_patient_id",
        "no_rule",
        "rule_failed",
        "unsupported_type",
        "too_large",
        "empty",
        "not_a_regular_file",
        "unreadable",
        "rejected",
        "patient_not_found",
        "conversion_failed",
    }
)


@dataclass(frozen=True)
class Receipt:
    """One receipt, in the contract's field order. `extra` keeps fields this version does not
    know (a receipt written by a newer one), so a retried file's history loses nothing."""

    status: str  # done | failed
    target: str | None
    patient_id: str | None
    source: str
    file: str
    sha256: str | None
    size: int | None
    format: str | None
    title: str | None
    type: str | None
    rule: str | None
    rule_line: int | None
    dropped_by: dict[str, Any] | None
    attempts: int
    received_at: str | None
    finished_at: str | None
    # A file sent as a PDF made from it: sha256, size and format above are the PDF's.
    source_format: str | None = None
    source_sha256: str | None = None
    source_size: int | None = None
    pages: int | None = None
    document_id: str | None = None  # done
    error: dict[str, Any] | None = None  # failed: {kind, message, http_status?}
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_row(cls, row: Row, status: str, file_name: str) -> Receipt:
        decision = row.decision or {}
        sent = _sent(row)
        return cls(
            status=status,
            document_id=row.document_id if status == "done" else None,
            target=decision.get("target") or None,  # a fail: rule names none
            patient_id=row.patient_id,
            source=str(row.source),
            file=file_name,
            sha256=sent["sha256"],
            size=sent["size"],
            format=sent["format"],
            source_format=sent.get("source_format"),
            source_sha256=sent.get("source_sha256"),
            source_size=sent.get("source_size"),
            pages=sent.get("pages"),
            title=decision.get("title"),
            type=decision.get("doc_type"),
            rule=decision.get("rule"),
            rule_line=decision.get("rule_line"),
            dropped_by=_owner(row.owner_uid),
            attempts=row.attempts,
            received_at=row.received_at,
            finished_at=row.finished_at,
            error=row.error if status == "failed" else None,
            history=list(row.history or []),
        )

    def to_dict(self) -> dict[str, Any]:
        receipt: dict[str, Any] = {"status": self.status}
        if self.status == "done":
            receipt["document_id"] = self.document_id
        for name in _BODY_FIELDS:
            receipt[name] = getattr(self, name)
            if name == "format" and self.source_sha256 is not None:
                receipt.update((key, getattr(self, key)) for key in _SOURCE_FIELDS)
        if self.status == "failed":
            receipt["error"] = self.error
        if self.history:
            receipt["history"] = self.history
        receipt.update((k, v) for k, v in self.extra.items() if k not in receipt)
        return receipt

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Receipt:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("source", "")
        values.setdefault("file", "")
        for name in (f.name for f in dataclasses.fields(cls)):
            if name not in ("extra", "history", "document_id", "error", *_SOURCE_FIELDS):
                values.setdefault(name, None)
        values["history"] = list(values.get("history") or [])
        values["attempts"] = values.get("attempts") or 0
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> Receipt:
        return cls.from_dict(read_receipt(path))


_BODY_FIELDS = (
    "target", "patient_id", "source", "file", "sha256", "size", "format", "title", "type", "rule",
    "rule_line", "dropped_by", "attempts", "received_at", "finished_at",
)  # fmt: skip


_SOURCE_FIELDS = ("source_format", "source_sha256", "source_size", "pages")


def _sent(row: Row) -> dict[str, Any]:
    """What was sent: the file itself, or the PDF made from it (then the file is the source)."""
    if row.converted_sha256 is None:
        return {"sha256": row.sha256, "size": row.size, "format": row.format or None}
    return {
        "sha256": row.converted_sha256,
        "size": row.converted_size,
        "format": row.converted_format,
        "source_format": row.format or None,
        "source_sha256": row.sha256,
        "source_size": row.size,
        "pages": row.converted_pages,
    }


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


def receipt_path(file_path: Path) -> Path:
    return file_path.with_name(file_path.name + SUFFIX)


def render(receipt: dict[str, Any]) -> bytes:
    # ensure_ascii=False keeps names readable; lone surrogates (undecodable bytes in a
    # name) cannot be UTF-8 encoded, so they fall back to \u escapes.
    try:
        return (json.dumps(receipt, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(receipt, ensure_ascii=True, indent=2) + "\n").encode("ascii")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_receipt(path: Path, receipt: dict[str, Any]) -> None:
    """Write `receipt` at `path` atomically; an identical receipt already there is fine.

    Raises FileExistsError when a different file holds the name.
    """
    data = render(receipt)
    # One temporary name per receipt: one that an interrupted write left (a share that died
    # mid-write) is removed by the next try rather than left behind.
    tag = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:12]
    tmp = path.with_name(f".{tag}.receipt.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        with new_file(tmp, FILE_MODE) as handle:
            handle.write(data)
        try:
            move_no_replace(tmp, path, data)
        except FileExistsError:
            if path.read_bytes() != data:
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def read_receipt(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_bytes())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a receipt")
    return loaded
