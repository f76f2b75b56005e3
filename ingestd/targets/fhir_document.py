"""The FHIR R4 (4.0.1) resources one upload is: a `DocumentReference` with its attachment inline
(`data`, base64, streamed) or a `Binary` posted first (the raw bytes, streamed) and referenced by
`url`; and the identifier that makes the create conditional.

Both bodies have an exact length before a byte is read: base64 is 4·⌈n/3⌉ characters and the
attachment's `hash` (base64 SHA-1, as FHIR defines it) is always 28, so the hash is taken from
the same reads that send the bytes and written after `data`, at the end of the JSON.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from ingestd.targets.base import Upload
from ingestd.targets.bodies import StreamingBody, file_chunks

FHIR_JSON = "application/fhir+json"
# RFC 3986: the identifier's value is itself a URI (urn:uuid:…), the usual choice in FHIR.
DEFAULT_IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"
# uuid5 namespace of ingestd's document identifiers (a random uuid4, fixed once).
IDENTIFIER_NAMESPACE = uuid.UUID("6f1d0c1e-9d4b-4f57-9a43-3c1d8f1e2b7a")
HASH_CHARS = 28  # base64 of a 20-byte SHA-1
B64_RAW_CHUNK = 48 * 1024  # a multiple of 3: every chunk but the last encodes without padding


def identifier_value(key: str) -> str:
    """The identifier of the document a claim sends: the same for every try, crash or not."""
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, key)}"


def concept(value: str) -> dict[str, object]:
    """A CodeableConcept from a rule's `type`/`category`: `system|code|display` (or
    `system|code`) as a coding when the system is a URI, plain text otherwise."""
    parts = value.split("|")
    if len(parts) in (2, 3) and ":" in parts[0] and parts[1] and " " not in parts[0]:
        coding = {"system": parts[0], "code": parts[1]}
        if len(parts) == 3 and parts[2]:
            coding["display"] = parts[2]
        return {"coding": [coding]}
    return {"text": value}


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DocumentMeta:
    """Everything of the DocumentReference but the attachment's bytes and hash."""

    identifier_system: str
    identifier: str
    subject: str  # Patient/<id>
    upload: Upload

    def resource(self) -> dict[str, object]:
        up = self.upload
        resource: dict[str, object] = {
            "resourceType": "DocumentReference",
            "identifier": [{"system": self.identifier_system, "value": self.identifier}],
            "status": "current",
        }
        if up.doc_type:
            resource["type"] = concept(up.doc_type)
        category = up.fields.get("category")
        if category:
            resource["category"] = [concept(category)]
        resource["subject"] = {"reference": self.subject}
        resource["date"] = _instant(up.not_before if up.not_before is not None else _now())
        if up.title:
            resource["description"] = up.title
        return resource

    def attachment(self) -> dict[str, object]:
        up = self.upload
        attachment: dict[str, object] = {"contentType": up.mime, "title": up.file_name}
        # An unreadable descriptor has no creation time: the send that reads it says so.
        with contextlib.suppress(OSError):
            attachment["creation"] = _instant(os.fstat(up.fd).st_mtime)
        attachment["size"] = up.size
        return attachment

    def with_url(self, url: str, sha1: str) -> bytes:
        """The whole resource, its attachment pointing at a Binary already stored."""
        attachment = {**self.attachment(), "url": url, "hash": sha1}
        return json.dumps({**self.resource(), "content": [{"attachment": attachment}]}).encode()


def _now() -> float:
    return datetime.now(UTC).timestamp()


class Sha1Tap:
    """The base64 SHA-1 of the bytes a body sent, ready once the body has read them all."""

    def __init__(self) -> None:
        self._hash = hashlib.sha1()  # noqa: S324 - FHIR's Attachment.hash is SHA-1 by definition
        self.done = False  # every byte went through: the hash is the file's

    def update(self, chunk: bytes) -> bytes:
        self._hash.update(chunk)
        return chunk

    def value(self) -> str:
        return base64.b64encode(self._hash.digest()).decode("ascii")


def attachment_sha1(upload: Upload) -> str:
    """The base64 SHA-1 of the file, read a chunk at a time (for a look-up; sends tap it)."""
    tap = Sha1Tap()
    for chunk in file_chunks(upload):
        tap.update(chunk)
    return tap.value()


class InlineDocumentBody(StreamingBody):
    """The DocumentReference with `data` streamed as base64 and `hash` after it."""

    content_type = FHIR_JSON

    def __init__(self, meta: DocumentMeta) -> None:
        self.sha1 = Sha1Tap()
        head = json.dumps(meta.resource()).encode("ascii")[:-1]
        head += b', "content": [{"attachment": '
        head += json.dumps(meta.attachment()).encode("ascii")[:-1] + b', "data": "'
        tail_length = len(b'", "hash": "') + HASH_CHARS + len(b'"}}]}')
        encoded = 4 * ((meta.upload.size + 2) // 3)
        super().__init__(len(head) + encoded + tail_length, self._gen(meta.upload, head))

    def _gen(self, upload: Upload, head: bytes) -> Iterator[bytes]:
        yield head
        for chunk in file_chunks(upload, B64_RAW_CHUNK):
            yield base64.b64encode(self.sha1.update(chunk))
        self.sha1.done = True
        yield b'", "hash": "' + self.sha1.value().encode("ascii") + b'"}}]}'


class BinaryBody(StreamingBody):
    """The file's raw bytes for `POST [base]/Binary` (FHIR takes them with their own type)."""

    def __init__(self, upload: Upload) -> None:
        self.sha1 = Sha1Tap()
        self.content_type = upload.mime if upload.mime.isprintable() else "application/octet-stream"
        super().__init__(upload.size, self._gen(upload))

    def _gen(self, upload: Upload) -> Iterator[bytes]:
        for chunk in file_chunks(upload):
            yield self.sha1.update(chunk)
        self.sha1.done = True
