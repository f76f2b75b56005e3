"""Streaming bodies: exact lengths, faithful content, and requests sending Content-Length."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import json
import os
from email.message import EmailMessage

import pytest
import requests

from ingestd.targets import bodies
from ingestd.targets.bodies import SourceChanged, SourceUnreadable, StreamingBody
from ingestd.targets.leyr import LeyrJsonBody
from ingestd.targets.nymbl import MultipartBody

from .conftest import UploadFactory, pdf_bytes

SIZES = [0, 1, 2, 3, 4, 65535, 65536, 65537, 1024 * 1024 + 1]


def drain(body: StreamingBody) -> bytes:
    return b"".join(body)


def parse_multipart(body: MultipartBody, raw: bytes) -> EmailMessage:
    head = f"Content-Type: {body.content_type}\r\n\r\n".encode()
    msg = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
    assert isinstance(msg, EmailMessage)
    assert msg.is_multipart()
    return msg


@pytest.mark.parametrize("size", SIZES)
def test_leyr_body_length_is_exact_and_decodes(make_upload: UploadFactory, size: int) -> None:
    data = pdf_bytes(size)
    up = make_upload(data, title='Blod "prov" ö', doc_type="Lab Result")
    body = LeyrJsonBody(up, created_by_id="resource-123")
    raw = drain(body)
    assert len(raw) == len(body)
    doc = json.loads(raw)
    assert base64.b64decode(doc["content"], validate=True) == data
    assert doc["format"] == "application/pdf"
    assert doc["title"] == 'Blod "prov" ö'
    assert doc["type"] == "Lab Result"
    assert doc["created_by_id"] == "resource-123"
    assert list(doc) == ["content", "format", "title", "type", "created_by_id"]


def test_leyr_body_omits_created_by_id_when_none(make_upload: UploadFactory) -> None:
    doc = json.loads(drain(LeyrJsonBody(make_upload(b"abc"))))
    assert "created_by_id" not in doc


@pytest.mark.parametrize("size", SIZES)
def test_multipart_length_is_exact_and_parses(make_upload: UploadFactory, size: int) -> None:
    data = pdf_bytes(size)
    up = make_upload(data, file_name="remiss.pdf")
    body = MultipartBody(up, [("document_type", "Referral"), ("description", "Från dr Å")])
    raw = drain(body)
    assert len(raw) == len(body)
    parts = list(parse_multipart(body, raw).iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == [
        "document_type",
        "description",
        "file",
    ]
    assert parts[0].get_payload(decode=True) == b"Referral"
    assert parts[1].get_payload(decode=True) == "Från dr Å".encode()
    assert parts[2].get_filename() == "remiss.pdf"
    assert parts[2].get_content_type() == "application/pdf"
    assert parts[2].get_payload(decode=True) == data


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("remiss.pdf", 'filename="remiss.pdf"'),
        ("a;b 'c'.pdf", "filename=\"a;b 'c'.pdf\""),
        (
            'Remiss "Dr. O\'Brien".pdf',
            'filename="Remiss \\"Dr. O\'Brien\\".pdf"; '
            "filename*=UTF-8''Remiss%20%22Dr.%20O%27Brien%22.pdf",
        ),
        ("back\\slash.pdf", "filename=\"back\\\\slash.pdf\"; filename*=UTF-8''back%5Cslash.pdf"),
        ("ends in\\", "filename*=UTF-8''ends%20in%5C; filename=\"ends in\\\\\""),
        ("100%22.pdf", "filename=\"100%22.pdf\"; filename*=UTF-8''100%2522.pdf"),
        ("åäö.pdf", "filename=\"åäö.pdf\"; filename*=UTF-8''%C3%A5%C3%A4%C3%B6.pdf"),
        ("a\r\nb\t.pdf", "filename=\"a%0D%0Ab%09.pdf\"; filename*=UTF-8''a%0D%0Ab%09.pdf"),
    ],
)
def test_file_name_is_a_quoted_string_plus_filename_star_when_not_plain_ascii(
    make_upload: UploadFactory, name: str, params: str
) -> None:
    body = MultipartBody(make_upload(b"%PDF-1.7", file_name=name), [])
    raw = drain(body)
    assert f'Content-Disposition: form-data; name="file"; {params}\r\n'.encode() in raw
    if name.isprintable():  # the email package drops control characters from names
        # The standard library's RFC 2231 reading (filename* first, then the quoted string).
        [file_part] = list(parse_multipart(body, raw).iter_parts())
        assert file_part.get_filename() == name


def test_multipart_boundary_is_random(make_upload: UploadFactory) -> None:
    up = make_upload()
    a, b = MultipartBody(up, []), MultipartBody(up, [])
    assert a.boundary != b.boundary
    assert a.content_type == f"multipart/form-data; boundary={a.boundary}"


def test_bodies_are_chunks_of_at_most_64_kib_not_file_like(make_upload: UploadFactory) -> None:
    """urllib3 sends an iterable's chunks as they are (one sendall each); given a `read`, it
    would pull 16 KiB at a time (8 KiB with urllib3 1.26)."""
    up = make_upload(pdf_bytes(300_001))
    for body in (LeyrJsonBody(up), MultipartBody(up, [])):
        assert not hasattr(body, "read")
        sizes = [len(chunk) for chunk in body]
        assert sum(sizes) == len(body)
        assert max(sizes) == bodies.CHUNK


def test_a_body_is_used_up_and_a_new_one_starts_from_offset_zero(
    make_upload: UploadFactory,
) -> None:
    up = make_upload(pdf_bytes(100_000))
    body = LeyrJsonBody(up)
    first = drain(body)
    assert drain(body) == b""
    assert drain(LeyrJsonBody(up)) == first


@pytest.mark.parametrize(
    "factory",
    [lambda up: LeyrJsonBody(up), lambda up: MultipartBody(up, [("description", "d")])],
    ids=["leyr", "multipart"],
)
def test_requests_sends_content_length_not_chunked(make_upload: UploadFactory, factory) -> None:  # type: ignore[no-untyped-def]
    body = factory(make_upload(pdf_bytes(300_000)))
    prepared = requests.Request(
        "POST", "http://127.0.0.1:9/x", data=body, headers={"Content-Type": body.content_type}
    ).prepare()
    assert prepared.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in prepared.headers
    assert prepared.body is body


def test_reads_are_bounded_by_the_chunk_size(
    make_upload: UploadFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = make_upload(pdf_bytes(3 * 1024 * 1024))
    asked: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        asked.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    drain(LeyrJsonBody(up))
    drain(MultipartBody(up, []))
    assert asked
    assert max(asked) <= bodies.CHUNK


def test_a_file_shorter_than_announced_raises_source_changed(make_upload: UploadFactory) -> None:
    up = make_upload(b"short", size=100)
    with pytest.raises(SourceChanged):
        drain(LeyrJsonBody(up))
    with pytest.raises(SourceChanged):
        drain(MultipartBody(up, []))
    assert not issubclass(SourceChanged, OSError)  # urllib3 would take it for a network error


def test_an_unreadable_descriptor_raises_source_unreadable(make_upload: UploadFactory) -> None:
    up = make_upload(b"x" * 10)
    bad = dataclasses.replace(up, fd=987_654)
    with pytest.raises(SourceUnreadable) as info:
        drain(MultipartBody(bad, []))
    assert info.value.errno_name == "EBADF"
    assert not issubclass(SourceUnreadable, OSError)
