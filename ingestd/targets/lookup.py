"""What the EHR look-ups share: which listed documents may be ours, and in what order to check.

After an unknown outcome a target asks its EHR whether it already holds the document. What the
EHR lists about a document (name, title, format) may be normalised, shortened or re-encoded, so
it is only a hint for the order of checking; a candidate is ours only if its content has our
size and SHA-256. The time window keeps a long patient history from being downloaded: nothing
this file sent can have been stored before the file was received (`Upload.not_before`), less a
generous allowance for an EHR clock or time zone that is off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

_B64_SLICE = 4 * 16 * 1024  # base64 characters decoded at a time

# An EHR clock (or a time zone written as UTC) off by up to a day still finds the document.
CLOCK_SLACK_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Candidate:
    document_id: str
    hinted: bool  # its listed name, title or format is ours
    stored_at: float | None  # epoch seconds, when the listing says; None: not said


def stored_at(value: object) -> float | None:
    """Epoch seconds from an ISO 8601 time as the EHR lists it; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def in_window(when: float | None, not_before: float | None) -> bool:
    """False only when the EHR says it stored the document well before we could have sent it."""
    if when is None or not_before is None:
        return True
    return when >= not_before - CLOCK_SLACK_SECONDS


def check_order(candidates: Iterable[Candidate]) -> list[str]:
    """Document ids to compare, most likely first: hinted ones, then the most recently stored."""
    ordered = sorted(candidates, key=lambda c: (not c.hinted, -(c.stored_at or 0.0)))
    return [c.document_id for c in ordered]


def base64_sha256(content: str) -> tuple[int, str] | None:
    """(size, hex SHA-256) of base64 text, decoded a slice at a time; None if not base64."""
    digest = hashlib.sha256()
    size = 0
    try:
        for start in range(0, len(content), _B64_SLICE):
            chunk = base64.b64decode(content[start : start + _B64_SLICE], validate=True)
            digest.update(chunk)
            size += len(chunk)
    except (binascii.Error, ValueError):
        # Line breaks or other whitespace misalign the slices: decode it whole instead.
        try:
            data = base64.b64decode(content)
        except (binascii.Error, ValueError):
            return None
        return len(data), hashlib.sha256(data).hexdigest()
    return size, digest.hexdigest()


def streamed_sha256(chunks: Iterable[bytes], limit: int | None) -> tuple[int, str] | None:
    """(size, hex SHA-256) of a body read a chunk at a time; None once it grows past `limit`
    (larger than what we sent: not ours, and not worth reading to the end)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        digest.update(chunk)
    return size, digest.hexdigest()
