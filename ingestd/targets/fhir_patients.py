"""Which FHIR Patient a folder's patient id names: `Patient/<id>` (read once to prove it exists)
or an identifier `<system>|<value>` (e.g. the Swedish personal number's OID), resolved by a
search that must find exactly one patient — none is `patient_not_found`, several is
`invalid_patient_id`: never a guess. Answers are kept for a few minutes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import requests

from ingestd.targets.answers import json_object, raise_for_outcome
from ingestd.targets.base import PermanentError, TransientError

RESOURCE_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")  # FHIR R4 `id`
_SYSTEM = re.compile(r"[^\s|]+")
CACHE_SECONDS = 300.0
EXPECTED = (
    "expected Patient/<id> (letters, digits, '-', '.') or an identifier <system>|<value>, "
    "e.g. urn:oid:1.2.752.129.2.1.3.1|191212121212"
)

Get = Callable[[str, str], requests.Response]


def validate_patient_id(patient_id: str) -> str | None:
    """An error message (never quoting the id) or None when a FHIR target can address it."""
    if patient_id.startswith("Patient/"):
        if RESOURCE_ID.fullmatch(patient_id.removeprefix("Patient/")):
            return None
        return f"the Patient id is not a FHIR id: {EXPECTED}"
    system, bar, value = patient_id.partition("|")
    value_ok = value.isprintable() and value.strip() == value and "|" not in value
    if bar and _SYSTEM.fullmatch(system) and ":" in system and value and value_ok:
        return None
    return f"the patient id is not in a form a FHIR target takes: {EXPECTED}"


def search_token(identifier: str) -> str:
    """`system|value` as a FHIR token search parameter: `,`, `$` and `\\` escaped, then the
    whole percent-encoded (the `|` too)."""
    escaped = identifier.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$")
    return quote(escaped, safe="")


class PatientResolver:
    """Patient references by folder patient id, asked of the server and kept a while."""

    def __init__(self, base_url: str, get: Get, name: str) -> None:
        self._base = base_url
        self._get = get
        self._name = name
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, float]] = {}

    def reference(self, patient_id: str) -> str:
        """`Patient/<id>` for this folder's patient, or a PermanentError saying why not."""
        with self._lock:
            cached = self._known.get(patient_id)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        if patient_id.startswith("Patient/"):
            reference = self._read(patient_id)
        else:
            reference = self._search(patient_id)
        with self._lock:
            self._known[patient_id] = (reference, time.monotonic() + CACHE_SECONDS)
        return reference

    def _read(self, reference: str) -> str:
        what = f"{self._name} patient read"
        response = self._get(f"{self._base}/{reference}", what)
        if response.status_code in (404, 410):
            raise PermanentError(
                f"{what}: the EHR has no such Patient (HTTP {response.status_code})",
                404,
                kind="patient_not_found",
            )
        raise_for_outcome(response, what, [reference, reference.removeprefix("Patient/")])
        return reference

    def _search(self, identifier: str) -> str:
        what = f"{self._name} patient search"
        url = f"{self._base}/Patient?identifier={search_token(identifier)}"
        response = self._get(url, what)
        redact = [identifier, identifier.partition("|")[2]]
        raise_for_outcome(response, what, redact)
        bundle = json_object(response, what)
        if bundle.get("resourceType") != "Bundle":
            raise TransientError(f"{what}: HTTP {response.status_code} without a Bundle")
        ids = _matched_patients(bundle)
        total = bundle.get("total")
        count = max(len(ids), total if isinstance(total, int) else 0)
        if count == 0:
            raise PermanentError(
                f"{what}: no Patient in the EHR carries this identifier",
                None,
                kind="patient_not_found",
            )
        if count > 1:
            more = "several" if len(ids) > 1 and not isinstance(total, int) else str(count)
            raise PermanentError(
                f"{what}: {more} Patients in the EHR carry this identifier; ingestd never "
                "guesses between them: have the EHR's duplicate patients merged, or map the "
                "folder to Patient/<id>",
                None,
                kind="invalid_patient_id",
            )
        return f"Patient/{ids[0]}"


def _matched_patients(bundle: dict[str, object]) -> list[str]:
    """Ids of the Patients a search matched (not those it only included)."""
    entries = bundle.get("entry")
    found: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        resource, search = entry.get("resource"), entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode not in (None, "match") or not isinstance(resource, dict):
            continue
        rid = resource.get("id")
        patient = resource.get("resourceType") == "Patient"
        if patient and isinstance(rid, str) and RESOURCE_ID.fullmatch(rid):
            found.append(rid)
    return found
