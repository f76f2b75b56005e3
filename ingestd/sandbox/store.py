"""The sandbox's memory: stored documents, issued tokens and the request log, behind one lock.

Documents live in a scope (API, plus EMR/care unit/patient for Leyr, patient for Nymbl) so that a
route only ever sees its own patient's documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingestd.sandbox.pdfcheck import pdf_pages

Scope = tuple[str, ...]

# Bounded so that a long benchmark or demo cannot grow the sandbox without limit.
REQUEST_LOG_LIMIT = 100_000


@dataclass(frozen=True)
class StoredDocument:
    """One uploaded document, as the sandbox stored it."""

    api: str  # leyr | nymbl
    id: str
    patient_id: str  # as the client wrote it in the path (percent-decoded)
    name: str  # Leyr: title; Nymbl: file_name
    title: str  # Leyr: title; Nymbl: description
    doc_type: str
    mime: str
    size: int
    sha256: str
    content: bytes = field(repr=False)
    fields: dict[str, str] = field(default_factory=dict)
    created_at: str = ""

    @property
    def pages(self) -> int | None:
        """For a PDF: its pages (0: it does not open; None: not checked, see pdfcheck)."""
        return pdf_pages(self.content) if self.mime == "application/pdf" else None

    def to_json(self) -> dict[str, object]:
        """Everything but the content: for the control plane."""
        return {
            "api": self.api,
            "id": self.id,
            "patient_id": self.patient_id,
            "name": self.name,
            "title": self.title,
            "doc_type": self.doc_type,
            "mime": self.mime,
            "size": self.size,
            "sha256": self.sha256,
            "fields": dict(self.fields),
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class RequestRecord:
    """One request the sandbox received; never its body."""

    api: str  # leyr | nymbl | token | control
    method: str
    route: str  # upload | list | get | value | delete | token | unknown | control route names
    status: int  # 0: the connection was closed without an answer
    patient_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "api": self.api,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "patient_id": self.patient_id,
        }


def utc_now() -> str:
    """ISO 8601 UTC, seconds, `Z`: the form both APIs' examples use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def new_document(
    api: str,
    id_prefix: str,
    content: bytes,
    *,
    patient_id: str,
    name: str,
    title: str,
    doc_type: str,
    mime: str,
    fields: dict[str, str],
) -> StoredDocument:
    """A document received just now: its id, size, digest and time are the sandbox's to give."""
    return StoredDocument(
        api=api,
        id=new_id(id_prefix),
        patient_id=patient_id,
        name=name,
        title=title,
        doc_type=doc_type,
        mime=mime,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        fields=fields,
        created_at=utc_now(),
    )


class Store:
    """Thread-safe; every method takes the one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[Scope, StoredDocument]] = {}
        self._tokens: dict[str, float] = {}
        self._log: deque[RequestRecord] = deque(maxlen=REQUEST_LOG_LIMIT)

    def add(self, scope: Scope, doc: StoredDocument) -> None:
        with self._lock:
            self._docs[doc.id] = (scope, doc)

    def in_scope(self, scope: Scope) -> list[StoredDocument]:
        with self._lock:
            return [doc for where, doc in self._docs.values() if where == scope]

    def get(self, scope: Scope, doc_id: str) -> StoredDocument | None:
        with self._lock:
            entry = self._docs.get(doc_id)
        return entry[1] if entry is not None and entry[0] == scope else None

    def delete(self, scope: Scope, doc_id: str) -> bool:
        with self._lock:
            entry = self._docs.get(doc_id)
            if entry is None or entry[0] != scope:
                return False
            del self._docs[doc_id]
            return True

    def remove(self, doc_id: str) -> bool:
        """Delete a document wherever it is (the control plane: "deleted in the EHR")."""
        with self._lock:
            return self._docs.pop(doc_id, None) is not None

    def replace_content(self, doc_id: str, content: bytes) -> bool:
        """Give a stored document other bytes under the same id ("changed in the EHR")."""
        with self._lock:
            entry = self._docs.get(doc_id)
            if entry is None:
                return False
            scope, doc = entry
            changed = dataclasses.replace(
                doc, content=content, size=len(content), sha256=hashlib.sha256(content).hexdigest()
            )
            self._docs[doc_id] = (scope, changed)
            return True

    def move(self, doc_id: str, patient_key: str, patient_id: str) -> bool:
        """File a stored document under another patient of the same API and care unit."""
        with self._lock:
            entry = self._docs.get(doc_id)
            if entry is None:
                return False
            scope, doc = entry
            moved = dataclasses.replace(doc, patient_id=patient_id)
            self._docs[doc_id] = ((*scope[:-1], patient_key), moved)
            return True

    def documents(self, api: str | None = None) -> list[StoredDocument]:
        with self._lock:
            return [doc for _, doc in self._docs.values() if api is None or doc.api == api]

    def issue_token(self, ttl_seconds: float) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for old in [t for t, expiry in self._tokens.items() if expiry <= now]:
                del self._tokens[old]
            self._tokens[token] = now + ttl_seconds
        return token

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working."""
        with self._lock:
            self._tokens.clear()

    def token_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def requests(self, api: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._log if api is None or r.api == api]

    def reset(self) -> None:
        with self._lock:
            self._docs.clear()
            self._tokens.clear()
            self._log.clear()
