"""One suite every target kind passes against the sandbox EHR, plus the shared HTTP helpers.

The `api` fixture is parametrised over the registry's kinds: a new kind joins by adding a
`Kind` entry below.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from ingestd import USER_AGENT
from ingestd.delivery.retrying import Delivered, Refused, deliver
from ingestd.sandbox import Fault, Sandbox
from ingestd.targets import COMMON_OPTIONS, KINDS, TargetSettings, make_target
from ingestd.targets.answers import parse_retry_after, server_reason
from ingestd.targets.base import AuthError, PermanentError, TargetError, TransientError, Upload
from ingestd.targets.fhir import FhirTarget
from ingestd.targets.http import HttpTarget
from ingestd.targets.leyr import LeyrTarget
from ingestd.targets.nymbl import NymblTarget

from .conftest import TargetFactory, UploadFactory, pdf_bytes


@dataclass(frozen=True)
class Kind:
    """What the shared suite needs to know about one target kind."""

    kind: str
    patient_id: str
    other_patient_id: str
    bad_patient_id: str
    credential_options: tuple[str, ...]  # options whose wrong value must give AuthError

    def check_metadata(self, doc: Any, up: Upload) -> None:
        assert doc.mime == up.mime
        assert doc.doc_type == up.doc_type
        if self.kind == "leyr":
            assert doc.title == up.title
            assert doc.fields.get("created_by_id") == up.fields["created_by_id"]
        elif self.kind == "fhir":
            assert doc.name == up.file_name
            assert doc.title == up.title
        else:
            assert doc.name == up.file_name
            assert doc.title == up.fields["description"]


KIND_CASES = {
    "leyr": Kind(
        "leyr",
        "se_personal_number:191212121212",
        "emr_id:pat-2",
        "bad id!",
        ("client_secret", "client_id"),
    ),
    "nymbl": Kind("nymbl", "12345", "67890", "12a45", ("client_secret", "api_key")),
    "fhir": Kind("fhir", "Patient/pat-1", "Patient/pat-2", "Patient/bad id!", ("client_secret",)),
}


@pytest.fixture(params=sorted(KINDS))
def api(request: pytest.FixtureRequest) -> Kind:
    return KIND_CASES[request.param]


@pytest.fixture
def upload_for(api: Kind, make_upload: UploadFactory) -> Callable[..., Upload]:
    def make(data: bytes | None = None, **kwargs: Any) -> Upload:
        kwargs.setdefault("patient_id", api.patient_id)
        kwargs.setdefault("title", "Remiss från dr Å")
        kwargs.setdefault("file_name", "remiss.pdf")
        kwargs.setdefault("fields", {"description": "Remiss, dr Å", "created_by_id": "res-1"})
        return make_upload(pdf_bytes(5000) if data is None else data, **kwargs)

    return make


def only_uploads(sb: Sandbox, api: Kind) -> list[Any]:
    return [r for r in sb.requests(api.kind) if r.route == "upload"]


# --- against the sandbox --------------------------------------------------------------------


def test_upload_round_trips_the_bytes(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    data = pdf_bytes(300_001, seed=7)
    up = upload_for(data)
    doc_id = target_for(sb, api.kind).send(up)
    [doc] = sb.documents(api.kind)
    assert doc.id == doc_id
    assert doc.sha256 == up.sha256
    assert doc.size == len(data)
    assert doc.content == data
    assert doc.patient_id == api.patient_id


def test_title_type_and_fields_land(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    up = upload_for(doc_type="Lab Result")
    target_for(sb, api.kind).send(up)
    [doc] = sb.documents(api.kind)
    api.check_metadata(doc, up)


def test_an_empty_upload_list_finds_nothing(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    assert target_for(sb, api.kind).find(upload_for()) is None


def test_find_locates_a_committed_document_and_not_an_absent_one(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    target = target_for(sb, api.kind)
    stored = upload_for(pdf_bytes(4000, seed=1))
    same_name_other_bytes = upload_for(pdf_bytes(4000, seed=2))
    other_patient = upload_for(pdf_bytes(4000, seed=3), patient_id=api.other_patient_id)
    doc_id = target.send(stored)
    target.send(other_patient)
    assert target.find(stored) == doc_id
    assert target.find(same_name_other_bytes) is None
    assert target.find(upload_for(pdf_bytes(4000, seed=3))) is None


@pytest.mark.parametrize("why", ["too_large", "unsupported_type", "invalid_patient_id"])
def test_a_refusal_sends_no_request_at_all(
    sandbox_factory: Callable[..., Sandbox],
    api: Kind,
    target_for: TargetFactory,
    upload_for: Callable[..., Upload],
    why: str,
) -> None:
    sb = sandbox_factory()
    target = target_for(sb, api.kind, max_bytes=1000)
    up = {
        "too_large": lambda: upload_for(pdf_bytes(1001)),
        "unsupported_type": lambda: upload_for(pdf_bytes(10), mime="image/gif"),
        "invalid_patient_id": lambda: upload_for(pdf_bytes(10), patient_id=api.bad_patient_id),
    }[why]()
    refusal = target.refusal(up)
    assert refusal is not None
    assert refusal.kind == why
    assert "ingestd retry" in refusal.message
    assert up.patient_id not in refusal.message
    assert sb.requests() == []


def test_an_acceptable_upload_is_not_refused(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    assert target_for(sb, api.kind).refusal(upload_for()) is None
    assert sb.requests() == []


@pytest.mark.parametrize(
    ("status", "retry_after", "error", "expected"),
    [
        (400, None, PermanentError, {"kind": "rejected", "http_status": 400}),
        (503, None, TransientError, {"http_status": 503, "sent": True, "outcome_unknown": False}),
        (429, "7", TransientError, {"http_status": 429, "retry_after": 7.0}),
    ],
    ids=["400 is permanent", "503 is transient", "429 brings its Retry-After"],
)
def test_an_error_status_is_classified(
    sb: Sandbox,
    api: Kind,
    target_for: TargetFactory,
    upload_for: Callable[..., Upload],
    status: int,
    retry_after: str | None,
    error: type[TargetError],
    expected: dict[str, Any],
) -> None:
    sb.add_fault(Fault(api=api.kind, route="upload", status=status, retry_after=retry_after))
    with pytest.raises(error) as info:
        target_for(sb, api.kind).send(upload_for())
    assert {key: getattr(info.value, key) for key in expected} == expected
    assert str(status) in info.value.message
    assert sb.documents(api.kind) == []


def test_unknown_patient_is_patient_not_found(
    sandbox_factory: Callable[..., Sandbox],
    api: Kind,
    target_for: TargetFactory,
    upload_for: Callable[..., Upload],
) -> None:
    sb = sandbox_factory(known_patients={api.patient_id})
    target = target_for(sb, api.kind)
    with pytest.raises(PermanentError) as info:
        target.send(upload_for(patient_id=api.other_patient_id))
    assert info.value.kind == "patient_not_found"
    assert info.value.http_status == 404
    assert api.other_patient_id not in info.value.message
    assert target.send(upload_for())  # the known one is taken


def test_a_proxys_413_before_the_body_is_read_is_too_large(
    sandbox_factory: Callable[..., Sandbox],
    api: Kind,
    target_for: TargetFactory,
    upload_for: Callable[..., Upload],
) -> None:
    """A proxy in front of the EHR with a lower body limit refuses unread (issue 11, item 7)."""
    sb = sandbox_factory(proxy_body_limit=64 * 1024)
    target = target_for(sb, api.kind)
    refused = deliver(target, upload_for(pdf_bytes(100 * 1024)), sleep=lambda seconds: None)
    assert isinstance(refused, Refused)
    assert isinstance(refused.error, PermanentError)
    assert (refused.error.kind, refused.error.http_status) == ("too_large", 413)
    assert refused.attempts == 1
    assert sb.documents(api.kind) == []
    assert target.send(upload_for(pdf_bytes(1024)))  # a small one still goes


def test_429_retry_after_as_http_date(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    sb.add_fault(
        Fault(api=api.kind, route="upload", status=429, retry_after=format_datetime(when, True))
    )
    with pytest.raises(TransientError) as info:
        target_for(sb, api.kind).send(upload_for())
    assert info.value.retry_after is not None
    assert 100 <= info.value.retry_after <= 121


@pytest.mark.parametrize("action", ["drop", "commit_drop"])
def test_a_dropped_connection_leaves_the_outcome_unknown_and_find_settles_it(
    sb: Sandbox,
    api: Kind,
    target_for: TargetFactory,
    upload_for: Callable[..., Upload],
    action: str,
) -> None:
    target = target_for(sb, api.kind)
    up = upload_for()
    sb.add_fault(Fault(api=api.kind, route="upload", action=action))
    with pytest.raises(TransientError) as info:
        target.send(up)
    assert info.value.sent is True
    assert info.value.outcome_unknown is True
    found = target.find(up)
    if action == "commit_drop":
        [doc] = sb.documents(api.kind)
        assert found == doc.id
    else:
        assert found is None
        assert sb.documents(api.kind) == []


def test_a_read_timeout_leaves_the_outcome_unknown(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api=api.kind, route="upload", action="delay", delay_seconds=2.0))
    target = target_for(sb, api.kind, timeout_seconds=0.3)
    with pytest.raises(TransientError) as info:
        target.send(upload_for())
    assert info.value.outcome_unknown is True
    assert info.value.sent is True


def test_nothing_listening_is_transient_and_not_sent(
    api: Kind, upload_for: Callable[..., Upload]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Bound, then closed without listening: connecting to it is refused.
    url = f"http://127.0.0.1:{port}"
    options = dict.fromkeys(KINDS[api.kind].required, "x")
    options["base_url"] = url
    if "token_url" in options:
        options["token_url"] = f"{url}/token"
    target = make_target(TargetSettings(api.kind, api.kind, options))
    try:
        with pytest.raises(TransientError) as info:
            target.send(upload_for())
    finally:
        target.close()
    assert info.value.sent is False
    assert info.value.outcome_unknown is False
    assert api.patient_id not in info.value.message


def test_a_file_that_shrank_mid_send_is_transient_and_stores_nothing(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    up = upload_for(pdf_bytes(200_000))
    shrunk = replace(up, size=up.size + 100_000)
    with pytest.raises(TransientError) as info:
        target_for(sb, api.kind).send(shrunk)
    assert "changed" in info.value.message
    assert info.value.outcome_unknown is False
    assert sb.documents(api.kind) == []


def test_an_unreadable_descriptor_is_permanent_unreadable(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    up = replace(upload_for(), fd=987_654)
    with pytest.raises(PermanentError) as info:
        target_for(sb, api.kind).send(up)
    assert info.value.kind == "unreadable"
    assert sb.documents(api.kind) == []


def test_wrong_credentials_are_an_auth_error(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    for option in api.credential_options:
        target = target_for(sb, api.kind, options={option: "wrong-secret"})
        # Through the retry policy: Nymbl's first 401 earns one new token and one resend.
        refused = deliver(target, upload_for(), sleep=lambda seconds: None)
        assert isinstance(refused, Refused)
        assert isinstance(refused.error, AuthError)
        assert refused.error.http_status == 401
        assert "wrong-secret" not in refused.error.message
        with pytest.raises(AuthError):
            target.find(upload_for())
    assert sb.documents(api.kind) == []


def test_deliver_retries_a_503_and_counts_attempts(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api=api.kind, route="upload", status=503, retry_after="0"))
    sleeps: list[float] = []
    result = deliver(target_for(sb, api.kind), upload_for(), sleep=sleeps.append)
    [doc] = sb.documents(api.kind)
    assert result == Delivered(doc.id, attempts=2, found_existing=False)
    assert sleeps == [0.0]


def test_deliver_after_a_commit_drop_finds_instead_of_sending_twice(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    sb.add_fault(Fault(api=api.kind, route="upload", action="commit_drop"))
    result = deliver(target_for(sb, api.kind), upload_for(), sleep=lambda s: None)
    [doc] = sb.documents(api.kind)
    assert result == Delivered(doc.id, attempts=1, found_existing=True)
    assert len(only_uploads(sb, api)) == 1


def test_concurrent_uploads_share_one_target(
    sb: Sandbox, api: Kind, target_for: TargetFactory, upload_for: Callable[..., Upload]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    target = target_for(sb, api.kind, concurrency=4)
    ups = [upload_for(pdf_bytes(20_000, seed=i), title=f"doc {i}") for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(target.send, ups))
    assert len(set(ids)) == 12
    assert sorted(d.sha256 for d in sb.documents(api.kind)) == sorted(u.sha256 for u in ups)


# --- the registry -----------------------------------------------------------------------------


def test_every_kind_is_registered_with_consistent_defaults() -> None:
    assert set(KINDS) == {"leyr", "nymbl", "fhir"}
    for name, kind in KINDS.items():
        assert kind.kind == name
        assert not (kind.required & kind.optional)
        assert not ((kind.required | kind.optional) & COMMON_OPTIONS)
        assert kind.default_max_bytes > 0
        assert kind.default_accept


@pytest.mark.parametrize("target_class", [LeyrTarget, NymblTarget, FhirTarget])
def test_every_option_of_a_kind_is_a_keyword_of_its_constructor(
    target_class: type[HttpTarget],
) -> None:
    keywords = set(inspect.signature(target_class).parameters)
    assert target_class.required | target_class.optional <= keywords


def test_make_target_applies_defaults_and_overrides(sb: Sandbox, api: Kind) -> None:
    from .conftest import settings_for

    target = make_target(settings_for(sb, api.kind))
    try:
        assert target.name == api.kind
        assert target.kind == api.kind
        assert target.max_bytes == KINDS[api.kind].default_max_bytes
        assert target.accept == KINDS[api.kind].default_accept
    finally:
        target.close()
    custom = make_target(
        settings_for(sb, api.kind, max_bytes=10, accept=frozenset({"application/pdf"}))
    )
    try:
        assert custom.max_bytes == 10
        assert custom.accept == frozenset({"application/pdf"})
    finally:
        custom.close()


def test_make_target_refuses_bad_settings(sb: Sandbox, api: Kind) -> None:
    from .conftest import settings_for

    good = settings_for(sb, api.kind)
    missing = dict(good.options)
    del missing["client_secret"]
    with pytest.raises(ValueError, match="client_secret"):
        make_target(TargetSettings(api.kind, api.kind, missing))
    with pytest.raises(ValueError, match="unknown option"):
        make_target(TargetSettings(api.kind, api.kind, {**good.options, "colour": "red"}))
    with pytest.raises(ValueError, match="unknown target kind"):
        make_target(TargetSettings("x", "hl7v2", good.options))


def test_a_session_sends_our_user_agent_and_never_retries_by_itself(
    sb: Sandbox, api: Kind, target_for: TargetFactory
) -> None:
    target = target_for(sb, api.kind, concurrency=7)
    session: requests.Session = target._session  # type: ignore[attr-defined]
    assert session.headers["User-Agent"] == USER_AGENT
    accept = "application/fhir+json" if api.kind == "fhir" else "application/json"
    assert session.headers["Accept"] == accept
    adapter = session.get_adapter("https://example.org/")
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    assert adapter._pool_maxsize >= 7  # type: ignore[attr-defined]


# --- shared helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("0", 0.0), ("7", 7.0), ("2.5", 2.5), ("soon", None), ("-3", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date_is_relative_and_never_negative() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    return response


def test_server_reason_is_short_printable_and_redacted() -> None:
    long = "x" * 500
    assert len(server_reason(_response(400, f'{{"error": "{long}"}}'.encode()))) == 200
    noisy = server_reason(_response(400, b'{"message": "bad\\u001b[31m\\r\\nthing\\u202e"}'))
    assert noisy.isprintable()
    assert noisy == "bad [31m thing"
    echoed = _response(404, b'{"message": "patient 191212121212 not found"}')
    assert "191212121212" not in server_reason(echoed, redact=["191212121212"])
    assert server_reason(_response(500, b"<html>oops</html>")) == ""
    assert server_reason(_response(400, b'{"error": {"message": "nested"}}')) == "nested"
