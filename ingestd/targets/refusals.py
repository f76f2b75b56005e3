"""Refusals made before any request: a file too large for the target, a type it does not take,
a patient id it cannot address. The messages say what to do.
"""

from __future__ import annotations

from collections.abc import Callable

from ingestd.targets.base import (
    Refusal,
    Upload,
)


def _human_size(n: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def refuse_size(upload: Upload, target_name: str, max_bytes: int) -> Refusal | None:
    if upload.size <= max_bytes:
        return None
    have, limit = _human_size(upload.size), _human_size(max_bytes)
    if have == limit:
        have, limit = f"{upload.size} bytes", f"{max_bytes} bytes"
    return Refusal(
        "too_large",
        f"file is {have}; {target_name} accepts at most {limit}: split or compress it, "
        "then use `ingestd retry`",
    )


def refuse_type(upload: Upload, target_name: str, accept: frozenset[str]) -> Refusal | None:
    if upload.mime in accept:
        return None
    return Refusal(
        "unsupported_type",
        f"format {upload.mime} is not accepted by {target_name} "
        f"(accepts {', '.join(sorted(accept))}): convert the file, or add the format to the "
        "target's accept: list if the EHR takes it, then use `ingestd retry`",
    )


def local_refusal(
    upload: Upload,
    target_name: str,
    max_bytes: int,
    accept: frozenset[str],
    validate_patient_id: Callable[[str], str | None],
) -> Refusal | None:
    """Size, then type, then patient id: decided here, before any request."""
    refused = refuse_size(upload, target_name, max_bytes) or refuse_type(
        upload, target_name, accept
    )
    if refused:
        return refused
    problem = validate_patient_id(upload.patient_id)
    if problem:
        return Refusal(
            "invalid_patient_id",
            f"{problem}; fix the folder name or the patients: mapping, then use `ingestd retry`",
        )
    return None
