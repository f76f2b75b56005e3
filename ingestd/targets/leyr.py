"""Leyr target: upload a document as JSON with base64 content, and find one already stored.

Owns Leyr's option names, its patient-id forms, its defaults (the documented MIME table, 20 MiB)
and the request shapes of "Attach a Document". One `send` is one POST; retries live elsewhere.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests

from ingestd.identifiers import luhn_ok
from ingestd.targets.answers import created_id, document_id, json_object, raise_for_outcome
from ingestd.targets.base import Fetched, TransientError, Upload
from ingestd.targets.bodies import StreamingBody, file_chunks
from ingestd.targets.http import DEFAULTS, HttpTarget
from ingestd.targets.lookup import Candidate, base64_sha256, check_order, in_window, stored_at
from ingestd.targets.settings import CommonSettings
from ingestd.targets.transport import transport_errors

_EMR_ID = re.compile(r"[A-Za-z0-9._-]+")
_PERSONAL_NUMBER = re.compile(r"[0-9]{12}")
_EXPECTED = (
    "expected an EMR id (letters, digits, '.', '_', '-'), 'emr_id:<EMR id>' "
    "or 'se_personal_number:<12 digits>'"
)
# Decoding base64 text in slices of a multiple of 4 characters keeps memory flat while hashing.


def validate_patient_id(patient_id: str) -> str | None:
    """An error message (never quoting the id) or None when Leyr can take this patient id."""
    if patient_id.startswith("se_personal_number:"):
        number = patient_id.removeprefix("se_personal_number:")
        if not _PERSONAL_NUMBER.fullmatch(number):
            return "a se_personal_number must be 12 digits (YYYYMMDDNNNC)"
        if not luhn_ok(number[2:]):
            return "the se_personal_number's check digit is wrong: check the number for a typo"
        return None
    bare = patient_id.removeprefix("emr_id:")
    # An id made only of dots would become a "." or ".." path segment.
    if not _EMR_ID.fullmatch(bare) or not bare.strip("."):
        return f"the patient id is not in a form Leyr takes: {_EXPECTED}"
    return None


def _segment(value: str) -> str:
    return quote(value, safe=":")


class LeyrTarget(HttpTarget):
    """One Leyr care unit: documents are POSTed as JSON, found again by title, format and hash."""

    kind = "leyr"
    required = frozenset({"base_url", "emr", "care_unit_id", "client_id", "client_secret"})
    optional = frozenset({"created_by_id"})
    default_accept = frozenset(
        {
            "application/pdf",
            "image/jpeg",
            "image/png",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/dicom",
            "text/plain",
        }
    )
    default_max_bytes = 20 * 1024 * 1024
    validate_patient_id = staticmethod(validate_patient_id)

    def __init__(
        self,
        name: str,
        common: CommonSettings = DEFAULTS,
        *,
        base_url: str,
        emr: str,
        care_unit_id: str,
        client_id: str,
        client_secret: str,
        created_by_id: str | None = None,
    ) -> None:
        super().__init__(name, common)
        self.created_by_id = created_by_id or None
        self._units = (
            f"{base_url.rstrip('/')}/emrs/{_segment(emr)}/care-units/{_segment(care_unit_id)}"
        )
        self._session.headers["x-leyr-client-id"] = client_id
        self._session.headers["x-leyr-client-secret"] = client_secret

    def send(self, upload: Upload) -> str:
        body = LeyrJsonBody(upload, upload.fields.get("created_by_id") or self.created_by_id)
        what = f"{self.name} upload"
        response = self._post(self._documents_url(upload), body, what)
        raise_for_outcome(response, what, self._redact(upload))
        return created_id(response, what)

    def find(self, upload: Upload) -> str | None:
        """Every listed document stored since we could have sent this one is a candidate (the
        list says nothing of size); the one whose decoded content has our size and SHA-256 is
        ours. Title and format only order the candidates: an EHR may normalise either."""
        what = f"{self.name} look-up"
        redact = self._redact(upload)
        response = self._get_once(self._documents_url(upload), what)
        if response.status_code == 404:
            return None
        raise_for_outcome(response, what, redact)
        items = json_object(response, what).get("items")
        if not isinstance(items, list):
            raise TransientError(f"{what}: HTTP {response.status_code} without a list of items")
        for doc_id in check_order(_candidates_in(items, upload)):
            if self._same_content(upload, doc_id, redact):
                return doc_id
        return None

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        """GET one document of this patient; its base64 `content` is hashed a slice at a time."""
        what = f"{self.name} verify"
        url = f"{self._patient_documents(patient_id)}/{quote(document_id, safe='')}"
        redact = [patient_id, patient_id.partition(":")[2], document_id]
        payload = self._document(url, what, redact)
        if payload is None:
            return None
        content = payload.get("content")
        digest = base64_sha256(content) if isinstance(content, str) else None
        if digest is None:
            raise TransientError(f"{what}: HTTP 200 without base64 content")
        said = payload.get("patient_id")
        other = isinstance(said, str) and _bare(said) != _bare(patient_id)
        return Fetched(digest[0], digest[1], other_patient=other)

    def _documents_url(self, upload: Upload) -> str:
        return self._patient_documents(upload.patient_id)

    def _patient_documents(self, patient_id: str) -> str:
        return f"{self._units}/patients/{_segment(patient_id)}/documents"

    def _same_content(self, upload: Upload, doc_id: str, redact: list[str]) -> bool:
        what = f"{self.name} look-up"
        url = f"{self._documents_url(upload)}/{quote(doc_id, safe='')}"
        # Every candidate is fetched: one too small to hold our file is not read at all.
        payload = self._document(url, what, [*redact, doc_id], min_size=upload.size)
        content = None if payload is None else payload.get("content")
        if not isinstance(content, str):
            return False
        digest = base64_sha256(content)
        return digest is not None and digest == (upload.size, upload.sha256)

    def _document(
        self, url: str, what: str, redact: list[str], min_size: int | None = None
    ) -> dict[str, Any] | None:
        """One document as JSON; None when the EHR has no such document, or its body is too
        short to hold `min_size` bytes as base64 (then it is not read)."""
        response = self._get_once(url, what, stream=True)
        try:
            # The body is read here, not by the GET: its transport errors are translated here.
            with transport_errors(what, self.timeout_seconds):
                if response.status_code == 404:
                    return None
                raise_for_outcome(response, what, redact)
                if min_size is not None and _too_short(response, min_size):
                    return None
                return json_object(response, what)
        finally:
            response.close()

    def _redact(self, upload: Upload) -> list[str]:
        return [
            upload.patient_id,
            upload.patient_id.partition(":")[2],
            upload.file_name,
            upload.title,
        ]


def _bare(patient_id: str) -> str:
    """`abc_1` and `emr_id:abc_1` are the same Leyr patient."""
    return patient_id.removeprefix("emr_id:")


def _candidates_in(items: list[object], upload: Upload) -> list[Candidate]:
    found: list[Candidate] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        # The guide lists no time; a `created_at`, where an EHR gives one, narrows the search.
        when = stored_at(item.get("created_at"))
        doc_id = document_id(item.get("id"))
        if doc_id is None or not in_window(when, upload.not_before):
            continue
        hinted = item.get("title") == upload.title and item.get("format") == upload.mime
        found.append(Candidate(doc_id, hinted, when))
    return found


def _too_short(response: requests.Response, size: int) -> bool:
    """True when the announced body cannot hold `size` bytes as base64 (4 characters per 3)."""
    length = response.headers.get("Content-Length", "")
    return length.isdigit() and int(length) < 4 * (size // 3)


# A multiple of 3, so every chunk but the last encodes to base64 without padding: 64 KiB out.
B64_RAW_CHUNK = 48 * 1024


class LeyrJsonBody(StreamingBody):
    """`{"content": "<base64>", "format", "title", "type", "created_by_id"?}` for Leyr."""

    content_type = "application/json"

    def __init__(self, upload: Upload, created_by_id: str | None = None) -> None:
        meta = {"format": upload.mime, "title": upload.title, "type": upload.doc_type}
        if created_by_id:
            meta["created_by_id"] = created_by_id
        prefix = b'{"content": "'
        # json.dumps of the other fields, minus its "{", appended after the content string.
        suffix = b'", ' + json.dumps(meta).encode("ascii")[1:]
        encoded = 4 * ((upload.size + 2) // 3)
        super().__init__(len(prefix) + encoded + len(suffix), self._gen(upload, prefix, suffix))

    @staticmethod
    def _gen(upload: Upload, prefix: bytes, suffix: bytes) -> Iterator[bytes]:
        yield prefix
        for chunk in file_chunks(upload, B64_RAW_CHUNK):
            yield base64.b64encode(chunk)
        yield suffix
