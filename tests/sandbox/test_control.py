"""The control plane's tamper hook: a stored document deleted, changed or moved to another
patient behind the client's back, as `ingestd verify` must notice."""

from __future__ import annotations

import base64
from typing import Any

import requests

from ingestd.sandbox import Sandbox

from .test_leyr_api import HEADERS, docs_url, upload


def tamper(sb: Sandbox, **request: Any) -> requests.Response:
    return requests.post(f"{sb.url}/_sandbox/tamper", json=request, timeout=10)


def get(sb: Sandbox, doc_id: str, pid: str = "abc_12345") -> requests.Response:
    return requests.get(f"{docs_url(sb, pid)}/{doc_id}", headers=HEADERS, timeout=10)


def test_content_changed_then_moved_then_deleted(sb: Sandbox) -> None:
    doc_id = upload(sb).json()["id"]
    other = b"%PDF-1.7\nchanged in the EHR"
    assert tamper(sb, id=doc_id, action="content", content=base64.b64encode(other).decode())
    assert base64.b64decode(get(sb, doc_id).json()["content"]) == other

    assert tamper(sb, id=doc_id, action="move", patient_id="xyz_1").status_code == 204
    assert get(sb, doc_id).status_code == 404
    assert get(sb, doc_id, "emr_id:xyz_1").status_code == 200

    assert tamper(sb, id=doc_id, action="delete").status_code == 204
    assert get(sb, doc_id, "xyz_1").status_code == 404
    assert sb.documents() == []


def test_bad_tamper_requests_are_400(sb: Sandbox) -> None:
    doc_id = upload(sb).json()["id"]
    assert tamper(sb, id="doc_nosuch", action="delete").status_code == 400
    assert tamper(sb, id=doc_id, action="explode").status_code == 400
    assert tamper(sb, id=doc_id, action="move", patient_id="no way").status_code == 400
    assert tamper(sb, id=doc_id, action="content", content="***").status_code == 400
    assert get(sb, doc_id).status_code == 200
