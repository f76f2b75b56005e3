"""Helpers the sandbox tests share: Leyr's client headers and document URLs, what an upload's
answer and a stored document must hold."""

from __future__ import annotations

import hashlib
from typing import Any

import requests

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox, StoredDocument

LEYR = SANDBOX_CREDENTIALS["leyr"]
LEYR_HEADERS = {
    "x-leyr-client-id": LEYR["client_id"],
    "x-leyr-client-secret": LEYR["client_secret"],
}


def leyr_docs_url(sb: Sandbox, pid: str, emr: str = "webdoc", cu: str = "care-unit-123") -> str:
    return f"{sb.leyr_base_url}/emrs/{emr}/care-units/{cu}/patients/{pid}/documents"


def assert_holds(doc: StoredDocument, data: bytes) -> None:
    """`doc` holds exactly `data`, with its size and SHA-256."""
    assert doc.content == data
    assert doc.size == len(data)
    assert doc.sha256 == hashlib.sha256(data).hexdigest()


def created(
    response: requests.Response, id_prefix: str, time_key: str
) -> tuple[dict[str, Any], str, str]:
    """A 201 answer's body less the id and time the sandbox made up, and those two, checked."""
    assert response.status_code == 201
    body = response.json()
    doc_id, at = body.pop("id"), body.pop(time_key)
    assert doc_id.startswith(id_prefix)
    assert at.endswith("Z")  # UTC
    return body, doc_id, at
