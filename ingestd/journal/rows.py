"""A journal row: the `Row` dataclass, the states, and how each column is stored (paths as bytes so
odd names survive byte for byte, JSON for decisions, errors and history)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

ACTIVE_STATES = ("claiming", "claimed", "uploading", "uploaded", "rejected")
FINAL_STATES = ("done", "failed")

COLUMNS = (
    "id", "source", "work", "state", "size", "sha256", "format", "patient_id", "decision",
    "attempts", "outcome_unknown", "document_id", "error", "dest", "history", "received_at",
    "finished_at", "next_attempt_at", "owner_uid", "sent_at", "converted_format",
    "converted_sha256", "converted_size", "converted_pages",
)  # fmt: skip
_PATHCOLUMNS = {"source", "work", "dest"}
_JSONCOLUMNS = {"decision", "error", "history"}


@dataclass(frozen=True)
class Row:
    """A journal row as the pipeline sees it."""

    id: int
    source: PurePosixPath
    work: PurePosixPath
    state: str
    size: int | None
    sha256: str | None
    format: str | None
    patient_id: str | None
    decision: dict[str, Any] | None
    attempts: int
    outcome_unknown: bool
    document_id: str | None
    error: dict[str, Any] | None
    dest: PurePosixPath | None
    history: list[dict[str, Any]] | None
    received_at: str
    finished_at: str | None
    next_attempt_at: float
    owner_uid: int | None
    sent_at: float | None
    converted_format: str | None = None  # the PDF sent instead of the file, once made
    converted_sha256: str | None = None
    converted_size: int | None = None
    converted_pages: int | None = None
    holder: str | None = None  # the instance that holds it (a shared journal); None: this one
    # Not stored: False when the claim found no receipts that `ingestd retry` kept for this
    # source, so the pipeline need not look for them (True: not known, look).
    retried: bool = field(default=True, compare=False)


def new_row(row_id: int, columns: dict[str, Any]) -> Row:
    """A freshly inserted row: the columns given, the schema's defaults for the rest."""
    defaults: dict[str, Any] = dict.fromkeys(COLUMNS)
    defaults.update(attempts=0, outcome_unknown=False, next_attempt_at=0.0)
    defaults.update(columns, id=row_id)
    return Row(**defaults)


def to_db(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _PATHCOLUMNS:
        return os.fsencode(str(value))
    if column in _JSONCOLUMNS:
        return json.dumps(value, ensure_ascii=True, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value


def from_db(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _PATHCOLUMNS:
        return PurePosixPath(os.fsdecode(bytes(value)))
    if column in _JSONCOLUMNS:
        return json.loads(value)
    if column == "outcome_unknown":
        return bool(value)
    return value


def row_from_db(columns: tuple[str, ...], record: tuple[Any, ...] | Any) -> Row:
    """A row from a record of `columns`, as a SELECT of them returned it."""
    return Row(**{name: from_db(name, value) for name, value in zip(columns, record, strict=True)})
