"""The sandbox's Leyr API, over real loopback sockets: routes, auth, ids and strict validation."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from ingestd.sandbox import Sandbox

from . import LEYR as CREDS
from . import LEYR_HEADERS as HEADERS
from . import assert_holds, created, leyr_docs_url

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4
PNR = "se_personal_number:191212121212"
MiB = 1024 * 1024


def docs_url(sb: Sandbox, pid: str = "abc_12345", **where: str) -> str:
    return leyr_docs_url(sb, pid, **where)


def payload(data: bytes = PDF, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "content": base64.b64encode(data).decode("ascii"),
        "format": "application/pdf",
        "title": "Blood Test Results",
        "type": "Lab Result",
        "created_by_id": "resource-123",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def upload(sb: Sandbox, pid: str = "abc_12345", **overrides: Any) -> requests.Response:
    return requests.post(docs_url(sb, pid), headers=HEADERS, json=payload(**overrides), timeout=10)


def raw_exchange(sb: Sandbox, head: bytes) -> bytes:
    """Send `head` (no body) on a fresh socket and read until the server closes."""
    parts = urlsplit(sb.url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(head)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def test_upload_answers_201_and_stores_the_document(sb: Sandbox) -> None:
    body, doc_id, created_at = created(upload(sb, PNR), "doc_", "created_at")
    assert body == {
        "title": "Blood Test Results",
        "type": "Lab Result",
        "format": "application/pdf",
        "created_by_id": "resource-123",
        "patient_id": PNR,
    }
    [doc] = sb.documents()
    assert doc.api == "leyr"
    assert doc.id == doc_id
    assert doc.patient_id == PNR
    assert doc.name == doc.title == "Blood Test Results"
    assert doc.doc_type == "Lab Result"
    assert doc.mime == "application/pdf"
    assert_holds(doc, PDF)
    assert doc.fields == {
        "emr": "webdoc",
        "care_unit_id": "care-unit-123",
        "type": "Lab Result",
        "created_by_id": "resource-123",
    }
    assert doc.created_at == created_at
    assert sb.documents("nymbl") == []


def test_optional_fields_may_be_left_out(sb: Sandbox) -> None:
    response = upload(sb, type=..., created_by_id=..., format="text/plain")
    assert response.status_code == 201
    assert response.json()["type"] is None
    assert response.json()["created_by_id"] is None
    assert sb.documents()[0].fields == {"emr": "webdoc", "care_unit_id": "care-unit-123"}


def test_list_get_and_delete(sb: Sandbox) -> None:
    first = upload(sb).json()["id"]
    second = upload(sb, title="Consent", data=b"second").json()["id"]
    upload(sb, pid="someone_else")
    listing = requests.get(docs_url(sb), headers=HEADERS, timeout=10)
    assert listing.status_code == 200
    items = listing.json()["items"]
    assert [item["id"] for item in items] == [first, second]
    assert all("content" not in item for item in items)
    assert set(items[1]) == {"id", "title", "type", "format", "created_by_id", "created_at"}

    one = requests.get(f"{docs_url(sb)}/{second}", headers=HEADERS, timeout=10)
    assert one.status_code == 200
    assert one.json()["title"] == "Consent"
    assert base64.b64decode(one.json()["content"]) == b"second"

    gone = requests.delete(f"{docs_url(sb)}/{first}", headers=HEADERS, timeout=10)
    assert gone.status_code == 204
    assert gone.content == b""
    assert requests.get(f"{docs_url(sb)}/{first}", headers=HEADERS, timeout=10).status_code == 404
    again = requests.delete(f"{docs_url(sb)}/{first}", headers=HEADERS, timeout=10)
    assert again.status_code == 404
    listing = requests.get(docs_url(sb), headers=HEADERS, timeout=10).json()["items"]
    assert [item["id"] for item in listing] == [second]


def test_another_patients_document_is_not_found(sb: Sandbox) -> None:
    doc_id = upload(sb, pid="abc_1").json()["id"]
    url = f"{docs_url(sb, 'abc_2')}/{doc_id}"
    assert requests.get(url, headers=HEADERS, timeout=10).status_code == 404
    assert requests.delete(url, headers=HEADERS, timeout=10).status_code == 404
    assert len(sb.documents()) == 1


@pytest.mark.parametrize(
    "pid",
    [
        "abc_12345",
        "emr_id:abc_12345",
        "emr_id%3Aabc_12345",
        "A.b-c_9",
        PNR,
        "se_personal_number%3A191212121212",
        "se_personal_number:198112189876",
    ],
)
def test_patient_id_forms_are_accepted(sb: Sandbox, pid: str) -> None:
    response = upload(sb, pid=pid)
    assert response.status_code == 201, response.text
    assert sb.documents()[0].patient_id == pid.replace("%3A", ":")


def test_bare_and_emr_id_forms_are_the_same_patient(sb: Sandbox) -> None:
    upload(sb, pid="abc_12345")
    listing = requests.get(docs_url(sb, "emr_id:abc_12345"), headers=HEADERS, timeout=10)
    assert len(listing.json()["items"]) == 1


@pytest.mark.parametrize(
    "pid",
    [
        "se_personal_number:191212121213",  # bad check digit
        "se_personal_number:1912121212",  # ten digits
        "se_personal_number:19121212121x",
        "ssn:191212121212",
        "emr_id:",
        "abc%20def",
        "abc%2Fdef",
        "emr_id:a:b",
        "%2E%2E",
    ],
)
def test_invalid_patient_ids_are_400(sb: Sandbox, pid: str) -> None:
    assert upload(sb, pid=pid).status_code == 400
    assert requests.get(docs_url(sb, pid), headers=HEADERS, timeout=10).status_code == 400
    assert sb.documents() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-leyr-client-id": CREDS["client_id"]},
        {"x-leyr-client-secret": CREDS["client_secret"]},
        {**HEADERS, "x-leyr-client-secret": "wrong"},
        {**HEADERS, "x-leyr-client-id": "wrong"},
    ],
)
def test_missing_or_wrong_client_headers_are_401(sb: Sandbox, headers: dict[str, str]) -> None:
    posted = requests.post(docs_url(sb), headers=headers, json=payload(), timeout=10)
    assert posted.status_code == 401
    assert "error" in posted.json()
    assert requests.get(docs_url(sb), headers=headers, timeout=10).status_code == 401
    assert sb.documents() == []


def test_unknown_emr_or_care_unit_is_404(sb: Sandbox) -> None:
    for url in (docs_url(sb, emr="cosmic"), docs_url(sb, cu="care-unit-999")):
        assert requests.post(url, headers=HEADERS, json=payload(), timeout=10).status_code == 404
        assert requests.get(url, headers=HEADERS, timeout=10).status_code == 404
    assert sb.documents() == []


def test_unknown_paths_and_methods(sb: Sandbox) -> None:
    assert requests.get(f"{sb.leyr_base_url}/emrs", headers=HEADERS, timeout=10).status_code == 404
    put = requests.put(docs_url(sb), headers=HEADERS, json=payload(), timeout=10)
    assert put.status_code == 405
    assert put.headers["Allow"] == "GET, POST"


def test_content_type_must_be_json(sb: Sandbox) -> None:
    body = json.dumps(payload())
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = dict(HEADERS)
        if content_type:
            headers["Content-Type"] = content_type
        posted = requests.post(docs_url(sb), headers=headers, data=body, timeout=10)
        assert posted.status_code == 415
    ok_headers = {**HEADERS, "Content-Type": "application/json; charset=utf-8"}
    assert requests.post(docs_url(sb), headers=ok_headers, data=body, timeout=10).status_code == 201


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"content": "not base64!"}, 400),
        ({"content": "aGVsbG8"}, 400),  # missing padding
        ({"content": "aGVs\nbG8="}, 400),
        ({"content": ""}, 400),
        ({"content": ...}, 400),
        ({"content": 12}, 400),
        ({"format": "application/zip"}, 415),
        ({"format": "image/gif"}, 415),
        ({"format": ...}, 400),
        ({"title": ...}, 400),
        ({"title": ""}, 400),
        ({"title": "   "}, 400),
        ({"title": 5}, 400),
        ({"type": 5}, 400),
        ({"created_by_id": ["x"]}, 400),
        ({"description": "not a Leyr field"}, 400),
        ({"file_name": "x.pdf"}, 400),
    ],
)
def test_strict_validation(sb: Sandbox, overrides: dict[str, Any], status: int) -> None:
    response = upload(sb, **overrides)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert sb.documents() == []


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"', b"\xff\xfe{}", b"[" * 100_000])
def test_body_must_be_a_json_object(sb: Sandbox, body: bytes) -> None:
    headers = {**HEADERS, "Content-Type": "application/json"}
    assert requests.post(docs_url(sb), headers=headers, data=body, timeout=10).status_code == 400


def test_every_mime_type_in_the_table_is_accepted(sb: Sandbox) -> None:
    formats = [
        "application/pdf",
        "image/jpeg",
        "image/png",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/dicom",
        "text/plain",
    ]
    for fmt in formats:
        assert upload(sb, format=fmt).status_code == 201
    assert [doc.mime for doc in sb.documents()] == formats


def test_non_ascii_title_is_kept(sb: Sandbox) -> None:
    title = "Remiss från vårdcentralen ✓ 😀"
    assert upload(sb, title=title).json()["title"] == title
    assert sb.documents()[0].title == title


def test_exactly_20_mib_is_accepted_and_one_byte_more_is_413(sb: Sandbox) -> None:
    assert upload(sb, data=b"\0" * (20 * MiB)).status_code == 201
    too_big = upload(sb, data=b"\0" * (20 * MiB + 1))
    assert too_big.status_code == 413
    assert len(sb.documents()) == 1


def test_oversized_content_length_is_refused_unread(sb: Sandbox) -> None:
    path = urlsplit(docs_url(sb)).path
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"x-leyr-client-id: {CREDS['client_id']}\r\n"
        f"x-leyr-client-secret: {CREDS['client_secret']}\r\n"
        "Content-Length: 40000000\r\n\r\n"
    ).encode()
    answer = raw_exchange(sb, head)  # no body is ever sent: the answer cannot wait for it
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in answer
    assert b"\r\nContent-Length: " in answer


def test_oversized_body_from_a_real_client_still_gets_its_413(sb: Sandbox) -> None:
    headers = {**HEADERS, "Content-Type": "application/json"}
    body = b"x" * (28 * MiB)
    response = requests.post(docs_url(sb), headers=headers, data=body, timeout=30)
    assert response.status_code == 413


def test_chunked_upload_body(sb: Sandbox) -> None:
    encoded = json.dumps(payload()).encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(encoded), 100):
            yield encoded[start : start + 100]

    headers = {**HEADERS, "Content-Type": "application/json"}
    response = requests.post(docs_url(sb), headers=headers, data=pieces(), timeout=10)
    assert response.status_code == 201
    assert sb.documents()[0].content == PDF


def test_unknown_patient_is_404_on_every_route() -> None:
    with Sandbox(known_patients={"abc_1", PNR}) as sb:
        assert upload(sb, pid="abc_1").status_code == 201
        assert upload(sb, pid="emr_id:abc_1").status_code == 201
        assert upload(sb, pid=PNR).status_code == 201
        doc_id = upload(sb, pid="abc_1").json()["id"]
        unknown = docs_url(sb, "abc_2")
        assert (
            requests.post(unknown, headers=HEADERS, json=payload(), timeout=10).status_code == 404
        )
        assert requests.get(unknown, headers=HEADERS, timeout=10).status_code == 404
        one = f"{unknown}/{doc_id}"
        assert requests.get(one, headers=HEADERS, timeout=10).status_code == 404
        assert requests.delete(one, headers=HEADERS, timeout=10).status_code == 404
        other_pnr = docs_url(sb, "se_personal_number:198112189876")
        assert requests.get(other_pnr, headers=HEADERS, timeout=10).status_code == 404
        assert len(sb.documents()) == 4
