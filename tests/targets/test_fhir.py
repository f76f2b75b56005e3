"""The FHIR R4 target against the sandbox's FHIR server: the DocumentReference it sends, the
conditional create on a stable identifier, the look-up path for servers without one, patients by
id or identifier, Binary uploads, FHIR's errors, and its three ways to authenticate."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingestd.delivery.retrying import Delivered, Refused, deliver
from ingestd.sandbox import SANDBOX_CREDENTIALS, Fault, Sandbox
from ingestd.targets import TargetSettings, make_target
from ingestd.targets.base import AuthError, PermanentError, Target, TransientError, Upload
from ingestd.targets.fhir import FhirTarget
from ingestd.targets.fhir_document import concept, identifier_value

from .conftest import TargetFactory, UploadFactory, pdf_bytes
from .fhir_r4 import Exchanges, check_resource, r4_library

PNR = "urn:oid:1.2.752.129.2.1.3.1|191212121212"
LOINC = "http://loinc.org|11506-3|Progress note"


@pytest.fixture
def upload(make_upload: UploadFactory) -> Callable[..., Upload]:
    def make(data: bytes | None = None, key: str = "claim-1", **kwargs: Any) -> Upload:
        kwargs.setdefault("patient_id", "Patient/pat-1")
        kwargs.setdefault("title", "Remiss från dr Å")
        kwargs.setdefault("file_name", "remiss.pdf")
        up = make_upload(pdf_bytes(5000) if data is None else data, **kwargs)
        object.__setattr__(up, "key", key)
        return up

    return make


def fhir(sb: Sandbox, target_for: TargetFactory, **options: str) -> FhirTarget:
    common = {k: options.pop(k) for k in ("max_bytes", "timeout_seconds") if k in options}
    target = target_for(sb, "fhir", options, **common)
    assert isinstance(target, FhirTarget)
    return target


def posted_documents(exchanges: Exchanges) -> list[dict[str, Any]]:
    return [r for r in exchanges.requests if r.get("resourceType") == "DocumentReference"]


def uploads(sb: Sandbox) -> list[Any]:
    return [r for r in sb.requests("fhir") if r.route == "upload"]


# --- the resource -----------------------------------------------------------------------------


def test_the_document_reference_carries_every_field(
    sb: Sandbox,
    target_for: TargetFactory,
    upload: Callable[..., Upload],
    fhir_exchanges: Exchanges,
) -> None:
    data = pdf_bytes(70_001, seed=3)
    up = upload(data, doc_type=LOINC, fields={"category": "Clinical note"})
    doc_id = fhir(sb, target_for).send(up)
    [sent] = posted_documents(fhir_exchanges)
    assert sent["status"] == "current"
    assert sent["identifier"] == [
        {"system": "urn:ietf:rfc:3986", "value": identifier_value("claim-1")}
    ]
    assert sent["subject"] == {"reference": "Patient/pat-1"}
    assert sent["description"] == up.title
    assert sent["type"] == {
        "coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]
    }
    assert sent["category"] == [{"text": "Clinical note"}]
    assert sent["date"].endswith("+00:00")
    attachment = sent["content"][0]["attachment"]
    assert attachment["contentType"] == "application/pdf"
    assert attachment["title"] == "remiss.pdf"
    assert attachment["size"] == len(data)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert base64.b64decode(attachment["data"]) == data
    assert "creation" in attachment
    [doc] = sb.documents("fhir")
    assert (doc.id, doc.content, doc.doc_type) == (doc_id, data, LOINC)


def test_a_plain_type_is_text_and_a_coding_needs_a_uri_system() -> None:
    assert concept("Remiss") == {"text": "Remiss"}
    assert concept("a|b") == {"text": "a|b"}
    assert concept("http://loinc.org|11506-3") == {
        "coding": [{"system": "http://loinc.org", "code": "11506-3"}]
    }


def test_the_r4_check_refuses_what_r4_refuses() -> None:
    """The validator can fail: a resource without its required status is not R4."""
    if r4_library() is None:
        pytest.skip("fhir.resources 6.1 (R4 4.0.1) is not installed: pip install -e '.[test]'")
    with pytest.raises(Exception, match="status"):
        check_resource({"resourceType": "DocumentReference", "content": [{"attachment": {}}]})
    with pytest.raises(Exception, match="date"):
        check_resource(
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "date": "yesterday",
                "content": [{"attachment": {}}],
            }
        )


def test_every_exchange_of_an_upload_is_recorded_for_the_r4_check(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload], fhir_exchanges: Exchanges
) -> None:
    pytest.importorskip(
        "fhir.resources", reason="fhir.resources (the R4 model library) is a test dependency"
    )
    target = fhir(sb, target_for, binary_above="1 KiB")
    up = upload(patient_id=PNR)
    doc_id = target.send(up)
    assert target.fetch(doc_id, PNR) is not None
    kinds = {r["resourceType"] for r in fhir_exchanges.responses}
    assert kinds >= {"CapabilityStatement", "Bundle", "DocumentReference"}
    assert fhir_exchanges.raw_requests == 1  # the Binary
    fhir_exchanges.check_all()


# --- exactly once, by the server ----------------------------------------------------------------


def test_a_resend_after_a_lost_answer_returns_the_stored_document(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    sb.add_fault(Fault(api="fhir", route="upload", action="commit_drop"))
    with pytest.raises(TransientError) as lost:
        target.send(upload())
    assert lost.value.outcome_unknown
    # A new Upload for the same claim (as after a crash): the same identifier.
    again = target.send(upload())
    [doc] = sb.documents("fhir")
    assert again == doc.id
    assert [r.status for r in uploads(sb)] == [0, 200]


def test_the_identifier_belongs_to_the_claim(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    first = target.send(upload(pdf_bytes(100, seed=1), key="claim-a"))
    assert target.send(upload(pdf_bytes(100, seed=1), key="claim-a")) == first
    assert target.send(upload(pdf_bytes(100, seed=1), key="claim-b")) != first
    assert len(sb.documents("fhir")) == 2


def test_deliver_after_a_lost_answer_finds_it_by_identifier_without_a_download(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api="fhir", route="upload", action="commit_drop"))
    result = deliver(fhir(sb, target_for), upload(), sleep=lambda s: None)
    [doc] = sb.documents("fhir")
    assert result == Delivered(doc.id, attempts=1, found_existing=True)
    assert [r.route for r in sb.requests("fhir") if r.route in ("get", "value")] == []


def test_without_conditional_create_the_look_up_compares_content(
    sandbox_factory: Callable[..., Sandbox],
    target_for: TargetFactory,
    upload: Callable[..., Upload],
    fhir_exchanges: Exchanges,
) -> None:
    sb = sandbox_factory(fhir_conditional_create=False)
    target = fhir(sb, target_for)
    assert target.capabilities().conditional_create is False
    data = pdf_bytes(9000, seed=5)
    stored = target.send(upload(data, key="claim-a"))
    # Another identifier (a journal lost with the claim): found by its content, not by name.
    assert target.find(upload(data, key="claim-b", file_name="renamed.pdf")) == stored
    assert target.find(upload(pdf_bytes(9000, seed=6), key="claim-c")) is None
    # And the resend after a lost answer asks before sending: still one document.
    sb.add_fault(Fault(api="fhir", route="upload", action="commit_drop"))
    result = deliver(target, upload(pdf_bytes(500), key="claim-d"), sleep=lambda s: None)
    assert isinstance(result, Delivered)
    assert result.found_existing
    assert len(sb.documents("fhir")) == 2
    assert all("If-None-Exist" not in r for r in fhir_exchanges.requests)


def test_a_server_with_conditional_create_is_trusted_with_a_resend(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    data = pdf_bytes(9000, seed=5)
    target.send(upload(data, key="claim-a"))
    assert target.find(upload(data, key="claim-b")) is None  # no download: the create decides
    assert [r.route for r in sb.requests("fhir") if r.route in ("get", "value")] == []


def test_several_documents_with_our_identifier_are_rejected_with_the_reason(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    sb._context.fhir.conditional_create = False  # two copies made while it was off
    target.send(upload())
    target.send(upload())
    sb._context.fhir.conditional_create = True
    with pytest.raises(PermanentError) as refused:
        target.send(upload())
    assert (refused.value.kind, refused.value.http_status) == ("rejected", 412)
    assert "several DocumentReferences" in refused.value.message
    assert len(sb.documents("fhir")) == 2


# --- patients -----------------------------------------------------------------------------------


def test_an_identifier_resolves_to_its_one_patient(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    target.send(upload(patient_id=PNR, key="a"))
    target.send(upload(patient_id=PNR, key="b"))
    docs = sb.documents("fhir")
    assert {d.patient_id for d in docs} == {
        "Patient/pat-" + hashlib.sha256(PNR.encode()).hexdigest()[:12]
    }
    searches = [r for r in sb.requests("fhir") if r.route == "patient"]
    assert len(searches) == 1  # kept for a while, not searched per upload


def test_an_identifier_matching_two_patients_is_never_a_guess(
    sandbox_factory: Callable[..., Sandbox],
    target_for: TargetFactory,
    upload: Callable[..., Upload],
) -> None:
    sb = sandbox_factory(fhir_patients={PNR: ["pat-a", "pat-b"]})
    refused = deliver(fhir(sb, target_for), upload(patient_id=PNR), sleep=lambda s: None)
    assert isinstance(refused, Refused)
    assert isinstance(refused.error, PermanentError)
    assert refused.attempts == 0  # a patient search is no upload
    assert refused.error.kind == "invalid_patient_id"
    assert "2 Patients" in refused.error.message
    assert "191212121212" not in refused.error.message
    assert sb.documents("fhir") == []
    assert uploads(sb) == []


def test_an_identifier_no_patient_carries_is_patient_not_found(
    sandbox_factory: Callable[..., Sandbox],
    target_for: TargetFactory,
    upload: Callable[..., Upload],
) -> None:
    sb = sandbox_factory(known_patients={"Patient/pat-1"})
    with pytest.raises(PermanentError) as refused:
        fhir(sb, target_for).send(upload(patient_id=PNR))
    assert refused.value.kind == "patient_not_found"
    assert "191212121212" not in refused.value.message
    assert uploads(sb) == []


@pytest.mark.parametrize(
    "patient_id",
    ["12345", "Patient/", "Patient/a b", "nosystem|123", "urn:x|", "urn:x|a|b", "urn:x| 1"],
)
def test_patient_ids_a_fhir_target_cannot_address_are_refused_locally(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload], patient_id: str
) -> None:
    refusal = fhir(sb, target_for).refusal(upload(patient_id=patient_id))
    assert refusal is not None
    assert refusal.kind == "invalid_patient_id"
    assert sb.requests() == []


# --- Binary -------------------------------------------------------------------------------------


def test_above_binary_above_the_bytes_go_as_a_binary_first(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload], fhir_exchanges: Exchanges
) -> None:
    target = fhir(sb, target_for, binary_above="64 KiB")
    data = pdf_bytes(200_000, seed=9)
    doc_id = target.send(upload(data))
    [doc] = sb.documents("fhir")
    assert (doc.id, doc.content) == (doc_id, data)
    assert sb.fhir_binaries() == 1
    [sent] = posted_documents(fhir_exchanges)
    attachment = sent["content"][0]["attachment"]
    assert attachment["url"].startswith(f"{sb.fhir_base_url}/Binary/")
    assert "data" not in attachment
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    fetched = target.fetch(doc_id, "Patient/pat-1")
    assert fetched is not None
    assert (fetched.size, fetched.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_a_lost_answer_after_the_binary_reuses_it(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for, binary_above="1 KiB")
    sb.add_fault(Fault(api="fhir", route="upload", status=503))
    with pytest.raises(TransientError):
        target.send(upload())
    target.send(upload())
    assert sb.fhir_binaries() == 1
    assert len(sb.documents("fhir")) == 1


def test_a_server_refusing_the_inline_size_gets_a_binary(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    sb.add_fault(Fault(api="fhir", route="upload", status=413))
    doc_id = target.send(upload(pdf_bytes(50_000)))
    assert sb.fhir_binaries() == 1
    assert [d.id for d in sb.documents("fhir")] == [doc_id]
    target.send(upload(pdf_bytes(60_000), key="claim-2"))  # as large or larger: Binary at once
    assert sb.fhir_binaries() == 2
    assert [r.status for r in uploads(sb)] == [413, 201, 201]


# --- errors -------------------------------------------------------------------------------------


def test_a_failing_patient_search_is_no_attempt_and_no_unknown_outcome(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api="fhir", route="patient", action="drop"))
    with pytest.raises(TransientError) as failed:
        fhir(sb, target_for).send(upload(patient_id=PNR))
    assert (failed.value.sent, failed.value.outcome_unknown) == (False, False)
    assert uploads(sb) == []


def test_an_operation_outcome_becomes_the_message(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api="fhir", route="upload", status=422))
    with pytest.raises(PermanentError) as refused:
        fhir(sb, target_for).send(upload())
    assert refused.value.http_status == 422
    assert "error processing: fault injected by the sandbox" in refused.value.message


def test_another_patients_document_under_our_identifier_is_refused(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    doc_id = target.send(upload())
    sb.move_document(doc_id, "Patient/pat-9")
    with pytest.raises(PermanentError, match="another patient"):
        target.send(upload())
    fetched = target.fetch(doc_id, "Patient/pat-1")
    assert fetched is not None
    assert fetched.other_patient


# --- auth ---------------------------------------------------------------------------------------


def _key_file(tmp_path: Path, kid: str) -> str:
    pytest.importorskip("jwt", reason="PyJWT is needed for SMART Backend Services")
    from ingestd.sandbox.fhir_token import sandbox_key_pem

    path = tmp_path / f"{kid}.pem"
    path.write_text(sandbox_key_pem(kid))
    return str(path)


def _fhir_with(sb: Sandbox, **auth: str) -> Target:
    return make_target(TargetSettings("fhir", "fhir", {"base_url": sb.fhir_base_url, **auth}))


def _smart(sb: Sandbox, tmp_path: Path, kid: str = "sandbox-rs384") -> Target:
    return _fhir_with(
        sb,
        token_url=sb.fhir_token_url,
        client_id=SANDBOX_CREDENTIALS["fhir"]["client_id"],
        private_key=_key_file(tmp_path, kid),
        key_id=kid,
    )


@pytest.mark.parametrize("kid", ["sandbox-rs384", "sandbox-es384"])
def test_smart_backend_services_signs_its_assertion(
    sb: Sandbox, tmp_path: Path, upload: Callable[..., Upload], kid: str
) -> None:
    target = _smart(sb, tmp_path, kid)
    try:
        assert target.send(upload())
        assert target.send(upload(key="claim-2"))
    finally:
        target.close()
    assert [r.status for r in sb.requests("token")] == [200]


def test_the_assertion_says_what_smart_asks(tmp_path: Path) -> None:
    jwt = pytest.importorskip("jwt", reason="PyJWT is needed for SMART Backend Services")
    from ingestd.targets.smart import assertion_maker

    make = assertion_maker(
        _key_file(tmp_path, "sandbox-rs384"), client_id="c1", token_url="https://t/x", key_id="k1"
    )
    first, second = make(), make()
    header = jwt.get_unverified_header(first)
    claims = jwt.decode(first, options={"verify_signature": False})
    assert (header["alg"], header["kid"], header["typ"]) == ("RS384", "k1", "JWT")
    assert claims["iss"] == claims["sub"] == "c1"
    assert claims["aud"] == "https://t/x"
    assert 0 < claims["exp"] - time.time() <= 300
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


def test_an_expired_assertion_is_refused_as_credentials(
    sandbox_factory: Callable[..., Sandbox], tmp_path: Path, upload: Callable[..., Upload]
) -> None:
    sb = sandbox_factory(fhir_clock_ahead_seconds=600)
    target = _smart(sb, tmp_path)
    try:
        refused = deliver(target, upload(), sleep=lambda s: None)
    finally:
        target.close()
    assert isinstance(refused, Refused)
    assert isinstance(refused.error, AuthError)
    assert refused.attempts == 0  # the token request is not an upload
    assert "client_assertion has expired" in refused.error.message
    assert "private_key" in refused.error.message
    assert uploads(sb) == []


def test_a_static_bearer_token(sb: Sandbox, upload: Callable[..., Upload]) -> None:
    good = _fhir_with(sb, bearer_token=SANDBOX_CREDENTIALS["fhir"]["bearer_token"])
    bad = _fhir_with(sb, bearer_token="wrong")
    try:
        assert good.send(upload())
        with pytest.raises(AuthError):
            bad.send(upload(key="claim-2"))
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"bearer_token": "x", "token_url": "https://t", "client_id": "c"}, "one auth form"),
        ({"token_url": "https://t", "client_id": "c"}, "client_secret"),
        ({"token_url": "https://t", "client_id": "c", "private_key": "k"}, "key_id"),
        ({"client_id": "c", "client_secret": "s"}, "token_url"),
        ({"binary_above": "lots"}, "binary_above"),
        ({"identifier_system": "not a uri"}, "identifier_system"),
    ],
)
def test_auth_and_options_are_checked(options: dict[str, str], problem: str) -> None:
    found = FhirTarget.validate_options({"base_url": "https://fhir", **options})
    assert problem in " ".join(found.values())


@pytest.mark.parametrize("size", ["3 MiB", "3 mib", "1.5 MB", "3145728", "0"])
def test_binary_above_takes_the_sizes_max_bytes_takes(size: str) -> None:
    found = FhirTarget.validate_options(
        {"base_url": "https://fhir", "bearer_token": "x", "binary_above": size}
    )
    assert "binary_above" not in found


# --- verify -------------------------------------------------------------------------------------


def test_fetch_reads_the_document_back_and_sees_a_change_or_a_deletion(
    sb: Sandbox, target_for: TargetFactory, upload: Callable[..., Upload]
) -> None:
    target = fhir(sb, target_for)
    data = pdf_bytes(30_000, seed=4)
    doc_id = target.send(upload(data, patient_id=PNR))
    fetched = target.fetch(doc_id, PNR)
    assert fetched is not None
    assert (fetched.size, fetched.sha256, fetched.other_patient) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        False,
    )
    sb.change_content(doc_id, b"other bytes")
    changed = target.fetch(doc_id, PNR)
    assert changed is not None
    assert changed.sha256 == hashlib.sha256(b"other bytes").hexdigest()
    sb.delete_document(doc_id)
    assert target.fetch(doc_id, PNR) is None


def test_an_operation_outcome_reason_is_short_and_never_repeats_the_patient() -> None:
    import requests

    from ingestd.targets.answers import server_reason

    response = requests.Response()
    response.status_code = 422
    response._content = (
        b'{"resourceType": "OperationOutcome", "issue": ['
        b'{"severity": "error", "code": "processing", "diagnostics": "Patient/pat-77 is inactive"},'
        b'{"severity": "warning", "code": "invalid", "details": {"text": "191212121212 unknown"}}]}'
    )
    reason = server_reason(response, ["urn:oid:x|191212121212", "191212121212", "pat-77"])
    assert reason == "error processing: Patient/[…] is inactive; warning invalid: […] unknown"


def test_a_server_refusing_the_identifier_search_still_gets_a_look_up(
    sandbox_factory: Callable[..., Sandbox],
    target_for: TargetFactory,
    upload: Callable[..., Upload],
) -> None:
    sb = sandbox_factory(fhir_conditional_create=False)
    target = fhir(sb, target_for)
    stored = target.send(upload(key="claim-a"))
    sb.add_fault(Fault(api="fhir", route="list", status=400))  # no search by identifier
    assert target.find(upload(key="claim-a")) == stored  # found by its content instead


def test_a_server_ignoring_the_identifier_parameter_does_not_make_another_document_ours(
    sb: Sandbox,
    target_for: TargetFactory,
    upload: Callable[..., Upload],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Servers ignore search parameters they do not know: the answer to `identifier=` may then
    be every document of the patient. Only one carrying our identifier is ours."""
    target = fhir(sb, target_for)
    target.send(upload(pdf_bytes(900, seed=1), key="claim-a", patient_id=PNR))
    search = target._search

    def ignoring_identifier(query: str, what: str, redact: list[str]) -> list[dict[str, Any]]:
        if "identifier=" in query:
            subject = target._patients.reference(PNR)
            query = f"DocumentReference?subject={subject}&_count=50"
        return search(query, what, redact)

    monkeypatch.setattr(target, "_search", ignoring_identifier)
    assert target.find(upload(pdf_bytes(900, seed=2), key="claim-b", patient_id=PNR)) is None


def test_a_listing_that_cannot_be_read_whole_proves_nothing_absent(
    sandbox_factory: Callable[..., Sandbox],
    target_for: TargetFactory,
    upload: Callable[..., Upload],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `next` page on another server (a proxy's address) cannot be followed with our
    credentials: the look-up says it cannot tell, rather than "not there" (a second copy)."""
    sb = sandbox_factory(fhir_conditional_create=False)
    target = fhir(sb, target_for)
    target.send(upload(pdf_bytes(900, seed=1), key="claim-a"))
    monkeypatch.setattr(
        "ingestd.targets.fhir.next_link", lambda bundle: "https://elsewhere.example/fhir?page=2"
    )
    with pytest.raises(TransientError, match="read whole"):
        target.find(upload(pdf_bytes(900, seed=2), key="claim-b"))


def test_a_capability_statement_behind_a_redirect_is_a_misconfiguration(
    sb: Sandbox, target_for: TargetFactory, fhir_exchanges: Exchanges
) -> None:
    """Read as "no capabilities" before: the target then skipped conditional creates."""
    sb.add_fault(Fault(api="fhir", route="metadata", status=302))
    with pytest.raises(AuthError, match="redirect"):
        fhir(sb, target_for).capabilities()
    fhir_exchanges.responses.clear()  # the injected redirect's body is a proxy's, not FHIR
