"""FHIR R4 target: one upload is one `DocumentReference`, created conditionally on an identifier
that stays the same across retries and crashes, so the server itself refuses a second copy.

Owns the kind's options, its defaults, the CapabilityStatement (read once: conditional create,
Binary create), the create (inline `data`, or a `Binary` first above `binary_above` or when the
server refuses the inline size), and reading documents back. A server without conditional
create gets the look-up the other targets use: by identifier, then by content.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from ingestd.targets.answers import json_object, raise_for_outcome
from ingestd.targets.base import Fetched, PermanentError, TargetError, TransientError, Upload
from ingestd.targets.bodies import StreamingBody
from ingestd.targets.fhir_answers import Capabilities, JsonBytes, capabilities_in, created_id
from ingestd.targets.fhir_auth import AUTH_OPTIONS, FhirAuth, parse_size, validate_options
from ingestd.targets.fhir_document import (
    DEFAULT_IDENTIFIER_SYSTEM,
    FHIR_JSON,
    BinaryBody,
    DocumentMeta,
    InlineDocumentBody,
    attachment_sha1,
    identifier_value,
)
from ingestd.targets.fhir_lookup import (
    candidates_in,
    carries_identifier,
    content_digest,
    documents_in,
    next_link,
    readable_here,
    same_origin,
    same_reference,
    subject_of,
)
from ingestd.targets.fhir_patients import PatientResolver, validate_patient_id
from ingestd.targets.http import DEFAULTS, HttpTarget
from ingestd.targets.lookup import CLOCK_SLACK_SECONDS, check_order
from ingestd.targets.settings import CommonSettings

MiB = 1024 * 1024
DEFAULT_BINARY_ABOVE = 3 * MiB  # inline JSON is 4/3 of the file: a 4 MB request limit is common
MAX_PAGES = 100


class FhirTarget(HttpTarget):
    """One FHIR R4 server's DocumentReference endpoint."""

    kind = "fhir"
    required = frozenset({"base_url"})
    optional = frozenset(
        {*AUTH_OPTIONS, "key_id", "scope", "token_auth", "binary_above", "identifier_system"}
    )
    default_accept = frozenset(
        {
            "application/pdf",
            "image/jpeg",
            "image/png",
            "image/tiff",
            "text/plain",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/dicom",
        }
    )
    default_max_bytes = 50 * MiB
    validate_patient_id = staticmethod(validate_patient_id)
    validate_options = staticmethod(validate_options)

    def __init__(
        self,
        name: str,
        common: CommonSettings = DEFAULTS,
        *,
        base_url: str,
        binary_above: str | None = None,
        identifier_system: str | None = None,
        bearer_token: str | None = None,
        token_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        private_key: str | None = None,
        key_id: str | None = None,
        scope: str | None = None,
        token_auth: str | None = None,
    ) -> None:
        super().__init__(name, common)
        given = {
            "bearer_token": bearer_token,
            "token_url": token_url,
            "client_id": client_id,
            "client_secret": client_secret,
            "private_key": private_key,
            "key_id": key_id,
            "scope": scope,
            "token_auth": token_auth,
        }
        auth = {key: value for key, value in given.items() if value}
        self._base = base_url.rstrip("/")
        given_size = parse_size(binary_above) if binary_above else None
        self._binary_above = DEFAULT_BINARY_ABOVE if given_size is None else given_size
        self._system = identifier_system or DEFAULT_IDENTIFIER_SYSTEM
        self._auth = FhirAuth(self._session, auth, name=name, timeout_seconds=self.timeout_seconds)
        self._session.headers["Accept"] = FHIR_JSON
        self._patients = PatientResolver(self._base, self._get, name)
        self._lock = threading.Lock()
        self._capabilities: Capabilities | None = None
        self._binaries: dict[str, tuple[str, str]] = {}  # identifier -> (url, sha1), until used

    # --- the Target interface -------------------------------------------------------------

    def send(self, upload: Upload) -> str:
        what = f"{self.name} upload"
        try:
            capabilities = self.capabilities()
            meta = self._meta(upload)
        except TargetError as exc:
            raise _unsent(exc) from None
        if upload.size > self._binary_above:
            return self._send_with_binary(meta, what)
        body = InlineDocumentBody(meta)
        answer = self._post_fhir(f"{self._base}/DocumentReference", body, what, meta)
        if answer[0].status_code == 413 and capabilities.binary_create:
            # The server (or a proxy) prefers a Binary for this size: so be it, from now on.
            with self._lock:
                self._binary_above = min(self._binary_above, upload.size - 1)
            return self._send_with_binary(meta, what)
        return self._created(answer, meta, what)

    def find(self, upload: Upload) -> str | None:
        """By identifier (one cheap search); then, when the server does not honour a
        conditional create, by content: our size in the time window, SHA-256 as proof."""
        meta = self._meta(upload)
        what = f"{self.name} look-up"
        redact = _redact(upload, meta.subject)
        token = f"{quote(self._system, safe=':/')}|{quote(meta.identifier, safe=':')}"
        try:
            by_identifier = self._search(f"DocumentReference?identifier={token}", what, redact)
        except PermanentError as exc:
            if exc.http_status != 400:
                raise
            by_identifier = []  # no search by identifier here: the content decides
        for resource in by_identifier:
            # A server that does not know the `identifier` parameter may ignore it and list
            # every document: only one carrying our identifier is ours.
            if carries_identifier(resource, meta.identifier_system, meta.identifier) and (
                same_reference(subject_of(resource), meta.subject, self._base)
            ):
                return str(resource.get("id"))
        if self.capabilities().conditional_create:
            return None  # a resend is conditional: the server answers with what it holds
        subject = quote(meta.subject, safe="/")
        window = ""
        if upload.not_before is not None:
            since = datetime.fromtimestamp(upload.not_before - CLOCK_SLACK_SECONDS, UTC)
            window = f"&_lastUpdated=ge{since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        listed = self._search(
            f"DocumentReference?subject={subject}&_count=50{window}", what, redact
        )
        sha1 = attachment_sha1(upload)
        by_id = {str(r.get("id")): r for r in listed}
        # Our uploads are inline or on our own server: one elsewhere is another system's.
        readable = [r for r in listed if readable_here(r, self._base)]
        for doc_id in check_order(candidates_in(readable, upload, sha1)):
            digest = self._digest(by_id[doc_id], what, [*redact, doc_id], limit=upload.size)
            if digest == (upload.size, upload.sha256):
                return doc_id
        return None

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        what = f"{self.name} verify"
        redact = [patient_id, patient_id.partition("|")[2], document_id]
        response = self._get(f"{self._base}/DocumentReference/{quote(document_id, safe='')}", what)
        if response.status_code in (404, 410):
            return None
        raise_for_outcome(response, what, redact)
        resource = json_object(response, what)
        try:
            other = not same_reference(
                subject_of(resource), self._patients.reference(patient_id), self._base
            )
        except PermanentError:
            other = True  # the folder's patient is no longer one patient in the EHR
        digest = self._digest(resource, what, redact)
        if digest is None:
            return None
        return Fetched(digest[0], digest[1], other_patient=other)

    def capabilities(self) -> Capabilities:
        """What the CapabilityStatement says, read once per target."""
        with self._lock:
            if self._capabilities is not None:
                return self._capabilities
        what = f"{self.name} capability statement"
        response = self._get(f"{self._base}/metadata", what)
        status = response.status_code
        if status >= 500 or status in (401, 408, 425, 429) or 300 <= status < 400:
            raise_for_outcome(response, what)
        statement = json_object(response, what) if 200 <= status < 300 else None
        found = capabilities_in(statement)
        with self._lock:
            self._capabilities = found
        return found

    # --- creating -----------------------------------------------------------------------

    def _meta(self, upload: Upload) -> DocumentMeta:
        key = upload.key or f"ingestd-unkeyed:{id(upload)}"
        subject = self._patients.reference(upload.patient_id)
        return DocumentMeta(self._system, identifier_value(key), subject, upload)

    def _send_with_binary(self, meta: DocumentMeta, what: str) -> str:
        with self._lock:
            stored = self._binaries.get(meta.identifier)
        if stored is None:
            body = BinaryBody(meta.upload)
            headers, token = self._headers({"Prefer": "return=minimal"})
            response = self._post(f"{self._base}/Binary", body, what, headers)
            self._after(response, what, _redact(meta.upload, meta.subject), token)
            binary_id = created_id(response, "Binary")
            if binary_id is None or not body.sha1.done:
                raise TransientError(f"{what}: Binary stored without an id", outcome_unknown=True)
            # Absolute: R4's Attachment.url is a `url`, which many servers read as absolute.
            stored = (f"{self._base}/Binary/{binary_id}", body.sha1.value())
            with self._lock:
                self._binaries[meta.identifier] = stored
        document = meta.with_url(*stored)
        try:
            answer = self._post_fhir(
                f"{self._base}/DocumentReference", JsonBytes(document), what, meta
            )
            doc_id = self._created(answer, meta, what)
        except PermanentError:
            with self._lock:  # refused for good: no later try will name this Binary
                self._binaries.pop(meta.identifier, None)
            raise
        with self._lock:
            self._binaries.pop(meta.identifier, None)
        return doc_id

    def _post_fhir(
        self, url: str, body: StreamingBody, what: str, meta: DocumentMeta
    ) -> tuple[requests.Response, str | None]:
        token = f"{quote(meta.identifier_system, safe=':/')}|{quote(meta.identifier, safe=':')}"
        extra = {"If-None-Exist": f"identifier={token}", "Prefer": "return=representation"}
        headers, bearer = self._headers(extra)
        return self._post(url, body, what, headers), bearer

    def _created(
        self, answer: tuple[requests.Response, str | None], meta: DocumentMeta, what: str
    ) -> str:
        response, token = answer
        redact = _redact(meta.upload, meta.subject)
        if response.status_code == 412:
            raise PermanentError(
                f"{what}: several DocumentReferences in the EHR already carry this document's "
                "identifier (HTTP 412 on the conditional create), so the server stored nothing; "
                "have them checked in the EHR",
                412,
            )
        self._after(response, what, redact, token)
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        # 200: an existing document with our identifier, ours only if it is this patient's.
        existing = response.status_code == 200 and isinstance(payload, dict)
        if existing and payload.get("resourceType") == "DocumentReference":
            self._check_subject(payload, meta, what)
        doc_id = created_id(response, "DocumentReference", payload)
        if doc_id is None:
            raise TransientError(
                f"{what}: HTTP {response.status_code} without a document id",
                response.status_code,
                outcome_unknown=True,
            )
        return doc_id

    def _check_subject(self, existing: dict[str, Any], meta: DocumentMeta, what: str) -> None:
        if not same_reference(subject_of(existing), meta.subject, self._base):
            raise PermanentError(
                f"{what}: the EHR holds a DocumentReference with this document's identifier "
                "for another patient; nothing was stored",
                200,  # what the server answered: it holds this identifier already
            )

    def _after(
        self, response: requests.Response, what: str, redact: list[str], token: str | None
    ) -> None:
        """Raise what a non-2xx answer to a POST means; a first 401 earns a new token."""
        if self._auth.answered(response.status_code, token):
            raise TransientError(
                f"{what}: HTTP 401; fetching a new token and sending once more", 401, 0.0
            )
        raise_for_outcome(response, what, redact)

    # --- reading ------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
        headers, token = self._auth.header()
        return {**headers, **extra}, token

    def _get(
        self, url: str, what: str, extra: Mapping[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        """GET with our credentials; a 401 is asked again once with a new token."""
        for _ in range(2):
            headers, token = self._headers(extra or {})
            response = self._get_once(url, what, headers, stream=stream)
            if not self._auth.answered(response.status_code, token):
                return response
            response.close()
        return response

    def _search(self, query: str, what: str, redact: list[str]) -> list[dict[str, Any]]:
        """Every DocumentReference a search finds, over its pages (on our server only)."""
        url: str | None = f"{self._base}/{query}"
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            if not same_origin(url, self._base):
                break
            response = self._get(url, what)
            raise_for_outcome(response, what, redact)
            bundle = json_object(response, what)
            found.extend(documents_in(bundle))
            url = next_link(bundle)
        # Part of a listing cannot prove a document absent: sending again could make a copy.
        raise TransientError(
            f"{what}: the server's listing goes on past {MAX_PAGES} pages or on another "
            "server (check its base address setting); nothing is sent until it can be read whole"
        )

    def _digest(
        self, resource: dict[str, Any], what: str, redact: list[str], limit: int | None = None
    ) -> tuple[int, str] | None:
        def streamed(url: str, what: str, extra: dict[str, str]) -> requests.Response:
            return self._get(url, what, extra, stream=True)

        return content_digest(
            resource, self._base, streamed, what, redact, self.timeout_seconds, limit
        )


def _unsent(exc: TargetError) -> TargetError:
    """An error before the upload request (CapabilityStatement, patient search): nothing was
    sent, so it is no attempt and leaves no outcome to ask about."""
    if isinstance(exc, TransientError):
        exc.sent, exc.outcome_unknown = False, False
    else:
        exc.sent = False  # type: ignore[attr-defined]  # read by deliver() with getattr
    return exc


def _redact(upload: Upload, subject: str = "") -> list[str]:
    """What a server's reason must not repeat: the patient (as mapped and as the EHR's own
    id), the file's name and title."""
    return [
        subject,
        subject.removeprefix("Patient/"),
        upload.patient_id,
        upload.patient_id.partition("|")[2],
        upload.patient_id.removeprefix("Patient/"),
        upload.file_name,
        upload.title,
    ]
