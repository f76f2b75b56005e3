"""Receipts: the JSON record beside every file in done/ or failed/, written atomically, never over
another file.

A receipt is written to a hidden temporary name in the same folder, fsynced, then hard-linked to
its final name (which fails instead of overwriting; without hard links, a rename that cannot
overwrite or an exclusive copy: see shares.py), and the folder is fsynced: a reader sees either no
receipt or a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingestd.shares import move_no_replace

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
    }
)


def utc_now() -> str:
    """ISO 8601 UTC with a Z, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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
