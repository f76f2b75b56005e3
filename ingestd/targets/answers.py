"""What an EHR's answer means: the status classified into the outcomes of `targets.base`
(2xx stored, 408/425/429/5xx transient, 401 credentials, other 4xx permanent), Retry-After in
seconds or HTTP-date form, the document id of a created document, and the server's reason
sanitised (bounded, printable, never echoing what we sent: patient ids, names, secrets).
"""

from __future__ import annotations

import email.utils
import json
import re
import unicodedata
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import requests

from ingestd.targets.base import (
    AuthError,
    PermanentError,
    TransientError,
)

REASON_MAX_CHARS = 200
RETRY_STATUSES = frozenset({408, 425, 429})
_RETRY_AFTER_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); never negative."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC per RFC 5322
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def server_reason(response: requests.Response, redact: Collection[str] = ()) -> str:
    """A short, printable reason from the server's JSON `error`/`message`, or "" if none."""
    try:
        payload = json.loads(response.content[:65536])
    except ValueError:
        return ""
    reason = _reason_from(payload)
    if not reason:
        return ""
    text = "".join(" " if unicodedata.category(c) in _UNPRINTABLE else c for c in reason)
    text = " ".join(text.split())
    # The server may quote our request back at us; what it quotes is PHI.
    for secret in sorted((s for s in redact if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "[…]")
    if len(text) > REASON_MAX_CHARS:
        text = text[: REASON_MAX_CHARS - 1] + "…"
    return text


def _reason_from(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    if payload.get("resourceType") == "OperationOutcome":
        return _outcome_issues(payload.get("issue"))
    for key in ("error_description", "message", "error", "title", "detail"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict):
            nested = _reason_from(value)
            if nested:
                return nested
    return ""


def _outcome_issues(issues: Any) -> str:
    """A FHIR OperationOutcome's issues, each `severity code: what it says`, joined by `; `."""
    said: list[str] = []
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, dict) else ""
        )
        head = " ".join(str(issue.get(k)) for k in ("severity", "code") if issue.get(k))
        if head or text:
            said.append(f"{head}: {text}" if head and text else str(head or text))
    return "; ".join(said)


def describe(response: requests.Response, what: str, redact: Collection[str] = ()) -> str:
    reason = server_reason(response, redact)
    text = f"{what}: HTTP {response.status_code}"
    return f"{text} ({reason})" if reason else text


def raise_for_outcome(response: requests.Response, what: str, redact: Collection[str] = ()) -> None:
    """Raise the TargetError a non-2xx answer means (a caller wanting a token refresh on 401
    checks for it first)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 401:
        raise AuthError(
            describe(response, f"{what}: the EHR refused our credentials (check them)", redact),
            status,
        )
    if 300 <= status < 400:
        # Never followed: a redirect could carry our credential headers to another host.
        raise AuthError(
            describe(response, f"{what} answered with a redirect: check base_url", redact), status
        )
    if status == 413:
        raise PermanentError(
            describe(
                response, f"{what}: the EHR or a proxy in front of it refused the size", redact
            ),
            status,
            kind="too_large",
        )
    if status == 404:
        raise PermanentError(
            describe(response, f"{what}: no such patient (check the patient id)", redact),
            status,
            kind="patient_not_found",
        )
    if status in RETRY_STATUSES or status >= 500:
        raise TransientError(
            describe(response, f"{what}: the EHR is busy or failing", redact),
            status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        raise PermanentError(
            describe(response, f"{what}: the EHR refused the document", redact),
            status,
            kind="rejected",
        )
    raise TransientError(describe(response, f"{what}: unexpected answer", redact), status)


def created_id(response: requests.Response, what: str) -> str:
    """The document id from a 2xx upload answer; without one the outcome is unknown."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    doc_id = document_id(payload.get("id")) if isinstance(payload, dict) else None
    if not doc_id:
        raise TransientError(
            f"{what}: HTTP {response.status_code} without a document id",
            response.status_code,
            sent=True,
            outcome_unknown=True,
        )
    return doc_id


def document_id(value: object) -> str | None:
    """A document id as the EHR's JSON gives it (a string or a whole number), as text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise TransientError(f"{what}: HTTP {response.status_code} with an unexpected body")
    return payload
