"""Leyr specifics: patient-id forms, created_by_id, paths, and find() among look-alikes."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import pytest
import requests

from ingestd.identifiers import luhn_ok
from ingestd.sandbox import Fault, Sandbox
from ingestd.targets import KINDS
from ingestd.targets.base import AuthError, Fetched, TransientError
from ingestd.targets.leyr import (
    LeyrTarget,
    _too_short,
    validate_patient_id,
)
from ingestd.targets.lookup import CLOCK_SLACK_SECONDS

from .conftest import TargetFactory, UploadFactory, pdf_bytes

VALID = [
    "abc_12345",
    "A.b-c_9",
    "emr_id:abc_12345",
    "se_personal_number:191212121212",
    "se_personal_number:198112189876",
]
INVALID = [
    "",
    "abc 123",
    "abc/123",
    "..",
    ".",
    "emr_id:",
    "emr_id:..",
    "emr_id:a/b",
    "åsa",
    "patient:123",
    "se_personal_number:191212121213",  # wrong check digit
    "se_personal_number:1912121212",  # 10 digits
    "se_personal_number:19121212-1212",
    "se_personal_number:١٩١٢١٢١٢١٢١٢",  # not ASCII digits
    "191212121212\n",
]


@pytest.mark.parametrize("patient_id", VALID)
def test_valid_patient_ids(patient_id: str) -> None:
    assert validate_patient_id(patient_id) is None


@pytest.mark.parametrize("patient_id", INVALID)
def test_invalid_patient_ids_say_what_is_expected_without_echoing(patient_id: str) -> None:
    message = validate_patient_id(patient_id)
    assert message
    if len(patient_id) >= 4 and patient_id != "emr_id:":
        assert patient_id not in message
    assert "se_personal_number" in message or "emr" in message.lower()


def test_luhn() -> None:
    assert luhn_ok("1212121212")
    assert not luhn_ok("1212121213")
    assert luhn_ok("8112189876")


def test_registry_defaults_match_the_documentation() -> None:
    kind = KINDS["leyr"]
    assert kind.default_max_bytes == 20 * 1024 * 1024
    assert kind.default_accept == LeyrTarget.default_accept
    assert "application/dicom" in LeyrTarget.default_accept
    assert "text/plain" in LeyrTarget.default_accept
    assert kind.required == {"base_url", "emr", "care_unit_id", "client_id", "client_secret"}
    assert kind.optional == {"created_by_id"}


@pytest.mark.parametrize(
    ("option", "field", "expected"),
    [
        (None, None, None),
        ("res-option", None, "res-option"),
        ("res-option", "res-field", "res-field"),
    ],
)
def test_created_by_id_comes_from_fields_then_option_else_is_omitted(
    sb: Sandbox,
    target_for: TargetFactory,
    make_upload: UploadFactory,
    option: str | None,
    field: str | None,
    expected: str | None,
) -> None:
    options = {"created_by_id": option} if option else {}
    target = target_for(sb, "leyr", options=options)
    fields = {"created_by_id": field} if field else {}
    target.send(make_upload(patient_id="abc_1", fields=fields))
    [doc] = sb.documents("leyr")
    assert doc.fields.get("created_by_id") == expected


@pytest.mark.parametrize(
    "patient_id", ["se_personal_number:191212121212", "emr_id:abc_12345", "abc.12-3_x"]
)
def test_each_patient_id_form_reaches_the_patient(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory, patient_id: str
) -> None:
    target = target_for(sb, "leyr")
    up = make_upload(patient_id=patient_id)
    doc_id = target.send(up)
    [doc] = sb.documents("leyr")
    assert doc.patient_id == patient_id
    assert target.find(up) == doc_id


def test_find_compares_content_among_documents_with_the_same_title(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    ups = [make_upload(pdf_bytes(10_000, seed=i), patient_id="p1", title="Same") for i in range(3)]
    ids = [target.send(up) for up in ups]
    assert [target.find(up) for up in ups] == ids


def test_find_goes_by_content_when_the_ehr_changed_title_and_format(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    """Title and format are hints: an EHR may normalise both; the content is the proof."""
    target = target_for(sb, "leyr")
    doc_id = target.send(make_upload(pdf_bytes(10_000, seed=0), patient_id="p1", title="Kopia"))
    target.send(make_upload(pdf_bytes(10_000, seed=1), patient_id="p1", title="Remiss"))
    as_listed_otherwise = make_upload(
        pdf_bytes(10_000, seed=0), patient_id="p1", title="Remiss", mime="image/png"
    )
    assert target.find(as_listed_otherwise) == doc_id
    assert target.find(make_upload(pdf_bytes(10_000, seed=2), patient_id="p1")) is None


def test_find_skips_documents_stored_well_before_the_file_arrived(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    up = make_upload(patient_id="p1")
    target.send(up)
    later = dataclasses.replace(up, not_before=time.time() + CLOCK_SLACK_SECONDS + 60)
    assert target.find(later) is None
    assert [r.route for r in sb.requests("leyr")] == ["upload", "list"]  # nothing downloaded
    assert target.find(dataclasses.replace(up, not_before=time.time() + 60)) is not None


def test_find_skips_a_document_deleted_between_list_and_get(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    up = make_upload(patient_id="p1")
    target.send(up)
    sb.add_fault(Fault(api="leyr", route="get", status=404))
    assert target.find(up) is None


def test_a_2xx_without_an_id_leaves_the_outcome_unknown(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    from ingestd.targets.base import TransientError

    sb.add_fault(Fault(api="leyr", route="upload", status=202))
    with pytest.raises(TransientError) as info:
        target_for(sb, "leyr").send(make_upload(patient_id="p1"))
    assert info.value.outcome_unknown is True
    assert info.value.http_status == 202


@pytest.mark.parametrize(
    ("content_length", "size", "too_short"),
    [("100", 1000, True), ("1331", 1000, True), ("1332", 1000, False), (None, 1000, False)],
)
def test_a_candidate_whose_body_cannot_hold_our_base64_is_not_read(
    content_length: str | None, size: int, too_short: bool
) -> None:
    response = requests.Response()
    if content_length is not None:
        response.headers["Content-Length"] = content_length
    assert _too_short(response, size) is too_short


def test_find_reads_past_smaller_documents_to_ours(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    target.send(make_upload(pdf_bytes(100, seed=1), patient_id="p1", title="Small"))
    doc_id = target.send(make_upload(pdf_bytes(9_000, seed=2), patient_id="p1", title="Big"))
    ours = make_upload(pdf_bytes(9_000, seed=2), patient_id="p1", title="Renamed")
    assert target.find(ours) == doc_id


def test_fetch_hashes_the_stored_content_and_sees_it_deleted_changed_or_moved(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    data = pdf_bytes(300_001, seed=4)
    upload = make_upload(data, patient_id="abc_12345")
    doc_id = target.send(upload)
    fetched = target.fetch(doc_id, "abc_12345")
    assert fetched == Fetched(len(data), upload.sha256)
    assert target.fetch(doc_id, "emr_id:abc_12345") == fetched  # the same patient
    assert target.fetch("doc_nosuch", "abc_12345") is None

    sb.change_content(doc_id, b"%PDF-1.7\nsomething else")
    changed = target.fetch(doc_id, "abc_12345")
    assert changed is not None
    assert changed.sha256 == hashlib.sha256(b"%PDF-1.7\nsomething else").hexdigest()

    sb.move_document(doc_id, "xyz_999")
    assert target.fetch(doc_id, "abc_12345") is None
    assert target.fetch(doc_id, "xyz_999") is not None
    sb.delete_document(doc_id)
    assert target.fetch(doc_id, "xyz_999") is None


def test_fetch_classifies_trouble_like_an_upload(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "leyr")
    doc_id = target.send(make_upload(patient_id="abc_12345"))
    sb.add_fault(Fault(api="leyr", route="get", status=503, retry_after="7"))
    with pytest.raises(TransientError) as busy:
        target.fetch(doc_id, "abc_12345")
    assert busy.value.retry_after == 7.0
    assert "abc_12345" not in busy.value.message
    assert doc_id not in busy.value.message
    bad = target_for(sb, "leyr", {"client_secret": "wrong"})
    with pytest.raises(AuthError):
        bad.fetch(doc_id, "abc_12345")
