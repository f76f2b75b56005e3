"""Nymbl specifics: the token's life, 401 handling, file names, and the OData look-up."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from ingestd.delivery.retrying import Delivered, Refused, deliver
from ingestd.sandbox import Fault, Sandbox
from ingestd.targets import KINDS
from ingestd.targets.base import AuthError, Fetched, Target, TransientError, Upload
from ingestd.targets.lookup import CLOCK_SLACK_SECONDS
from ingestd.targets.nymbl import NymblTarget, validate_options, validate_patient_id
from ingestd.targets.oauth2 import TokenSource, token_lifetime
from tests.conftest import wait_for

from .conftest import HARD_FILE_NAMES, TargetFactory, UploadFactory, pdf_bytes


def token_requests(sb: Sandbox) -> int:
    return len(sb.requests("token"))


def uploads(sb: Sandbox) -> list[Any]:
    return [r for r in sb.requests("nymbl") if r.route == "upload"]


@pytest.mark.parametrize("patient_id", ["1", "12345", "000123"])
def test_digits_are_valid_patient_ids(patient_id: str) -> None:
    assert validate_patient_id(patient_id) is None


@pytest.mark.parametrize("patient_id", ["", "12a", "-1", "1 2", "١٢٣", "123\n", "emr_id:12"])
def test_anything_else_is_invalid(patient_id: str) -> None:
    message = validate_patient_id(patient_id)
    assert message
    assert "digits" in message


def test_registry_defaults_match_the_documentation() -> None:
    kind = KINDS["nymbl"]
    assert kind.default_max_bytes == 25 * 1024 * 1024
    assert kind.default_accept == NymblTarget.default_accept
    assert len(NymblTarget.default_accept) == 5
    assert "image/tiff" in NymblTarget.default_accept
    assert kind.required == {"base_url", "api_key", "token_url", "client_id", "client_secret"}
    assert kind.optional == {"token_auth", "scope"}
    assert kind.validate_options({"token_auth": "basic"}) == {}
    assert set(validate_options({"token_auth": "digest"})) == {"token_auth"}


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (3600, 3570.0),
        (90, 60.0),
        (60, 30.0),
        (20, 10.0),
        (1, 0.5),
        (0, 60.0),
        (None, 60.0),
        ("300", 270.0),
        ("x", 60.0),
    ],
)
def test_token_lifetime_keeps_a_margin(expires_in: object, lifetime: float) -> None:
    assert token_lifetime(expires_in) == lifetime


def test_non_ascii_file_name_is_kept(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    up = make_upload(file_name='Remiss åäö "kopia" 日本.pdf', patient_id="12345")
    doc_id = target.send(up)
    [doc] = sb.documents("nymbl")
    assert doc.name == 'Remiss åäö "kopia" 日本.pdf'
    assert target.find(up) == doc_id


def test_description_defaults_to_the_title(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target_for(sb, "nymbl").send(make_upload(title="Röntgensvar", patient_id="1"))
    [doc] = sb.documents("nymbl")
    assert doc.title == "Röntgensvar"


def test_the_token_is_cached_across_uploads(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    for i in range(4):
        target.send(make_upload(pdf_bytes(100, seed=i), patient_id="1"))
    target.find(make_upload(pdf_bytes(100, seed=0), patient_id="1"))
    assert token_requests(sb) == 1
    assert len(uploads(sb)) == 4


def test_concurrent_first_uploads_fetch_one_token(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    sb.add_fault(Fault(api="token", action="delay", delay_seconds=0.3))
    target = target_for(sb, "nymbl", concurrency=6)
    ups = [make_upload(pdf_bytes(100, seed=i), patient_id="1") for i in range(6)]
    threads = [threading.Thread(target=target.send, args=(up,)) for up in ups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert token_requests(sb) == 1
    assert len(sb.documents("nymbl")) == 6


def test_the_token_is_refreshed_when_it_expires(
    sandbox_factory: Callable[..., Sandbox], target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    sb = sandbox_factory(token_ttl_seconds=1)
    target = target_for(sb, "nymbl")
    target.send(make_upload(pdf_bytes(100, seed=0), patient_id="1"))
    assert token_requests(sb) == 1
    counter = iter(range(1, 1000))

    def upload_until_a_new_token() -> bool:
        target.send(make_upload(pdf_bytes(100, seed=next(counter)), patient_id="1"))
        return token_requests(sb) == 2

    wait_for(upload_until_a_new_token, timeout=10, interval=0.1)
    # Refreshed ahead of the server's expiry: no upload was refused on the way.
    assert all(r.status != 401 for r in sb.requests("nymbl"))


@pytest.fixture
def revoked(sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory) -> Target:
    """A target with a cached token that the next upload finds refused, as if revoked."""
    target = target_for(sb, "nymbl")
    target.send(make_upload(pdf_bytes(100, seed=0), patient_id="1"))
    sb.add_fault(Fault(api="nymbl", route="upload", status=401))
    return target


def test_a_401_on_a_cached_token_refreshes_once_then_succeeds(
    sb: Sandbox, revoked: Target, make_upload: UploadFactory
) -> None:
    up = make_upload(pdf_bytes(100, seed=1), patient_id="1")
    with pytest.raises(TransientError) as info:
        revoked.send(up)
    assert (info.value.http_status, info.value.retry_after) == (401, 0)
    revoked.send(up)
    assert token_requests(sb) == 2


def test_deliver_rides_over_a_revoked_token(
    sb: Sandbox, revoked: Target, make_upload: UploadFactory
) -> None:
    sleeps: list[float] = []
    result = deliver(
        revoked, make_upload(pdf_bytes(100, seed=1), patient_id="1"), sleep=sleeps.append
    )
    assert isinstance(result, Delivered)
    assert result.attempts == 2
    assert sleeps == [0.0]
    assert token_requests(sb) == 2


def test_a_401_on_a_fresh_token_gets_one_more_token_and_one_resend(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    """Revoked right after it was issued: routine, not wrong credentials (issue 11, item 4)."""
    sb.add_fault(Fault(api="token", route="token", action="revoke"))
    target = target_for(sb, "nymbl")
    result = deliver(target, make_upload(patient_id="1"), sleep=lambda s: None)
    assert isinstance(result, Delivered)
    assert result.attempts == 2
    assert [r.status for r in uploads(sb)] == [401, 201]
    assert token_requests(sb) == 2
    assert len(sb.documents("nymbl")) == 1


def test_a_401_on_a_second_fresh_token_is_an_auth_error(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    sb.add_fault(Fault(api="nymbl", route="upload", status=401, times=None))
    target = target_for(sb, "nymbl")
    refused = deliver(target, make_upload(patient_id="1"), sleep=lambda s: None)
    assert isinstance(refused, Refused)
    assert isinstance(refused.error, AuthError)
    # A fresh token was refused, then a second fresh one: the credentials are wrong.
    assert refused.attempts == 2
    assert token_requests(sb) == 2
    assert sb.documents("nymbl") == []
    # Still refused later (a probe of the paused target): one new token, one request, no loop.
    again = deliver(target, make_upload(patient_id="1"), sleep=lambda s: None)
    assert isinstance(again, Refused)
    assert isinstance(again.error, AuthError)
    assert again.attempts == 1
    assert token_requests(sb) == 3


def test_an_accepted_token_makes_the_next_401_a_first_one_again(
    sb: Sandbox, revoked: Target, make_upload: UploadFactory
) -> None:
    for seed in (1, 2):
        result = deliver(
            revoked, make_upload(pdf_bytes(100, seed=seed), patient_id="1"), sleep=lambda s: None
        )
        assert isinstance(result, Delivered)
        assert result.attempts == 2
        sb.add_fault(Fault(api="nymbl", route="upload", status=401))
    assert token_requests(sb) == 3
    assert len(sb.documents("nymbl")) == 3


@pytest.mark.parametrize("token_auth", ["body", "basic"])
def test_bad_client_secret_is_an_auth_error_and_nothing_is_uploaded(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory, token_auth: str
) -> None:
    target = target_for(sb, "nymbl", options={"client_secret": "wrong", "token_auth": token_auth})
    with pytest.raises(AuthError) as info:
        target.send(make_upload(patient_id="1"))
    assert getattr(info.value, "sent", True) is False
    assert uploads(sb) == []
    delivered = deliver(target, make_upload(patient_id="1"), sleep=lambda s: None)
    assert isinstance(delivered, Refused)
    assert isinstance(delivered.error, AuthError)
    assert delivered.attempts == 0


def test_basic_client_authentication_works(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl", options={"token_auth": "basic"})
    assert target.send(make_upload(patient_id="1"))


@pytest.mark.parametrize("status", [500, 503])
def test_token_endpoint_failure_is_transient_and_not_sent(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory, status: int
) -> None:
    sb.add_fault(Fault(api="token", status=status, retry_after="4"))
    with pytest.raises(TransientError) as info:
        target_for(sb, "nymbl").send(make_upload(patient_id="1"))
    assert info.value.sent is False
    assert info.value.retry_after == 4.0
    assert uploads(sb) == []


def test_deliver_does_not_count_a_failed_token_request(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    sb.add_fault(Fault(api="token", status=503))
    result = deliver(target_for(sb, "nymbl"), make_upload(patient_id="1"), sleep=lambda s: None)
    assert result.attempts == 1


def test_find_pages_through_many_documents_with_the_same_name(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    ups = [make_upload(pdf_bytes(64, seed=i), patient_id="7") for i in range(205)]
    ids = [target.send(up) for up in ups]
    assert target.find(ups[-1]) == ids[-1]
    lists = [r for r in sb.requests("nymbl") if r.route == "list"]
    assert len(lists) == 3  # 100 + 100 + 5


def test_find_falls_back_to_client_side_filtering_when_filter_is_refused(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    up = make_upload(patient_id="7", file_name="it's.pdf")
    target.send(make_upload(pdf_bytes(300), patient_id="7", file_name="other.pdf"))
    doc_id = target.send(up)
    sb.add_fault(Fault(api="nymbl", route="list", status=400))
    assert target.find(up) == doc_id
    statuses = [r.status for r in sb.requests("nymbl") if r.route == "list"]
    assert statuses == [400, 200]


def _fake_response(url: str, payload: dict[str, Any], status: int = 200) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.url = url
    response._content = json.dumps(payload).encode()
    return response


def test_find_follows_next_links_on_the_same_origin_only(
    make_upload: UploadFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = NymblTarget(
        "nymbl",
        base_url="https://api.example.test",
        api_key="k",
        token_url="https://auth.example.test/token",
        client_id="c",
        client_secret="s",
    )
    up = make_upload(patient_id="1", file_name="a.pdf")
    item = {"id": "d1", "file_name": "a.pdf", "file_size_bytes": up.size}
    asked: list[str] = []
    pages = {
        0: {"value": [], "@odata.nextLink": "/Patients(1)/Documents?page=2"},
        1: {"value": [item], "@odata.nextLink": "https://evil.example.test/steal"},
    }

    def fake_get(url: str, what: str, *, stream: bool = False) -> requests.Response:
        asked.append(url)
        return _fake_response(url, pages[len(asked) - 1])

    monkeypatch.setattr(target, "_get", fake_get)
    monkeypatch.setattr(target, "_same_content", lambda up, doc_id, redact: doc_id == "d1")
    try:
        assert target.find(up) == "d1"
    finally:
        target.close()
    assert asked[1] == "https://api.example.test/Patients(1)/Documents?page=2"
    assert len(asked) == 2  # the foreign link was not followed


def test_find_ignores_a_candidate_whose_content_differs(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    target.send(make_upload(pdf_bytes(500, seed=1), patient_id="3"))
    same_name_and_size: Upload = make_upload(pdf_bytes(500, seed=2), patient_id="3")
    assert target.find(same_name_and_size) is None


def routes(sb: Sandbox) -> list[str]:
    return [r.route for r in sb.requests("nymbl")]


def test_find_does_not_depend_on_the_name_the_ehr_lists(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    """An EHR (or its form parser) may store another name: size and content decide."""
    target = target_for(sb, "nymbl")
    doc_id = target.send(make_upload(pdf_bytes(700, seed=1), patient_id="4", file_name="a.pdf"))
    renamed = make_upload(pdf_bytes(700, seed=1), patient_id="4", file_name='Remiss "x".pdf')
    assert target.find(renamed) == doc_id
    assert target.find(make_upload(pdf_bytes(700, seed=2), patient_id="4")) is None


def test_find_checks_the_document_with_our_name_first(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    for seed, name in [(1, "b.pdf"), (2, "a.pdf"), (3, "c.pdf")]:
        target.send(make_upload(pdf_bytes(700, seed=seed), patient_id="4", file_name=name))
    ours = make_upload(pdf_bytes(700, seed=2), patient_id="4", file_name="a.pdf")
    before = len(routes(sb))
    assert target.find(ours)
    assert routes(sb)[before:] == ["list", "value"]  # one download: the hinted one matched


def test_find_skips_documents_stored_well_before_the_file_arrived(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    up = make_upload(pdf_bytes(700, seed=1), patient_id="4")
    target.send(up)
    later = dataclasses.replace(up, not_before=time.time() + CLOCK_SLACK_SECONDS + 60)
    assert target.find(later) is None
    assert routes(sb) == ["upload", "list"]  # nothing downloaded
    assert target.find(dataclasses.replace(up, not_before=time.time() + 60)) is not None


@pytest.mark.parametrize("accepted", [("basic",), ("body",), ("basic", "body")])
def test_auto_client_authentication_finds_what_the_server_takes_and_keeps_it(
    target_for: TargetFactory, make_upload: UploadFactory, accepted: tuple[str, ...]
) -> None:
    server = Sandbox(port=0, token_ttl_seconds=1, token_client_auth=accepted).start()
    try:
        target = target_for(server, "nymbl")
        assert target.send(make_upload(patient_id="1"))
        first = token_requests(server)
        # Basic first (every server must take it); one more request only when it is refused.
        assert first == (1 if "basic" in accepted else 2)
        wait_for(
            lambda: (
                bool(target.send(make_upload(patient_id="1"))) and token_requests(server) > first
            ),
            timeout=10,
            interval=0.05,
        )
        assert token_requests(server) == first + 1  # the method that worked is kept
    finally:
        server.stop()


class _TokenEndpoint:
    """A stand-in session for TokenSource: records each token request, refuses the first
    `refusals` with 401, then issues a token."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.sent: list[tuple[dict[str, str], dict[str, str]]] = []  # (form, headers)

    def post(self, url: str, *, data: dict[str, str], headers: dict[str, str], **_: Any) -> Any:
        self.sent.append((dict(data), dict(headers)))
        refused = len(self.sent) <= self.refusals
        payload = {"error": "invalid_client"} if refused else {"access_token": "t"}
        return _fake_response(url, payload, 401 if refused else 200)


def _token_source(endpoint: _TokenEndpoint, client_id: str, secret: str, auth: str) -> Any:
    return TokenSource(
        endpoint,  # type: ignore[arg-type]
        token_url="https://auth.example.test/token",
        client_id=client_id,
        client_secret=secret,
        client_auth=auth,
    )


def _basic_pair(headers: dict[str, str]) -> str:
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(value).decode("utf-8")


def test_basic_credentials_on_the_wire_percent_encode_with_20_for_a_space() -> None:
    """RFC 6749 2.3.1 form-encoding with `%20`, not `+`: form decoders and percent decoders
    (Authlib) both get `a b+c%:é` back."""
    endpoint = _TokenEndpoint(refusals=0)
    _token_source(endpoint, "id one", "a b+c%:é", "basic").get()
    [(form, headers)] = endpoint.sent
    assert _basic_pair(headers) == "id%20one:a%20b%2Bc%25%3A%C3%A9"
    assert form == {"grant_type": "client_credentials"}


def test_refused_encoded_basic_is_tried_raw_then_as_form_fields_and_kept() -> None:
    endpoint = _TokenEndpoint(refusals=2)
    source = _token_source(endpoint, "ingestd", "a b", "auto")
    assert source.get() == ("t", True)
    pairs = [_basic_pair(h) if "Authorization" in h else f for f, h in endpoint.sent]
    assert pairs == [
        "ingestd:a%20b",
        "ingestd:a b",  # RFC 7617 as it is, for servers that decode nothing
        {"grant_type": "client_credentials", "client_id": "ingestd", "client_secret": "a b"},
    ]
    source.drop("t")
    source.get()
    assert "Authorization" not in endpoint.sent[-1][1]  # what worked is kept


@pytest.mark.parametrize(
    ("client_id", "secret", "auth", "tries"),
    [
        ("ingestd", "plain-secret_1.~", "auto", 2),  # raw equals encoded: not tried twice
        ("id:colon", "a b", "auto", 2),  # an id with `:` cannot go raw in Basic
        ("ingestd", "a b", "basic", 2),  # Basic both ways, never form fields
        ("ingestd", "a b", "body", 1),
    ],
)
def test_token_requests_tried_before_giving_up(
    client_id: str, secret: str, auth: str, tries: int
) -> None:
    endpoint = _TokenEndpoint(refusals=10)
    with pytest.raises(AuthError):
        _token_source(endpoint, client_id, secret, auth).get()
    assert len(endpoint.sent) == tries


@pytest.mark.parametrize("name", HARD_FILE_NAMES)
def test_the_sandbox_stores_each_file_name_as_it_was(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory, name: str
) -> None:
    target_for(sb, "nymbl").send(make_upload(patient_id="9", file_name=name))
    [doc] = sb.documents("nymbl")
    assert doc.name == name


def test_concurrent_uploads_refused_with_wrong_credentials_stop_after_the_second_token(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl", options={"api_key": "wrong"})
    uploads_ = [make_upload(pdf_bytes(100, seed=n), patient_id="1") for n in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def send(up: Upload) -> None:
        barrier.wait()
        result = deliver(target, up, sleep=lambda s: None)
        if isinstance(result, Refused) and isinstance(result.error, AuthError):
            errors.append(result.error)

    threads = [threading.Thread(target=send, args=(up,)) for up in uploads_]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(errors) == 4
    assert sb.documents("nymbl") == []
    # Each upload: its first token refused, then one replacement: never a third send.
    assert len(uploads(sb)) <= 8
    assert token_requests(sb) <= 1 + len(uploads_)


def test_fetch_streams_value_and_sees_it_deleted_changed_or_moved(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    data = pdf_bytes(1_000_003, seed=9)
    upload = make_upload(data, patient_id="12345")
    doc_id = target.send(upload)
    assert target.fetch(doc_id, "12345") == Fetched(len(data), upload.sha256)
    assert target.fetch(doc_id, "0012345") == Fetched(len(data), upload.sha256)  # same number
    routes = [r.route for r in sb.requests("nymbl") if r.method == "GET"]
    assert routes[-2:] == ["get", "value"]  # metadata (whose patient?), then the bytes
    assert target.fetch("doc-nosuch", "12345") is None

    sb.change_content(doc_id, b"%PDF-1.7\nother")
    changed = target.fetch(doc_id, "12345")
    assert changed is not None
    assert (changed.size, changed.sha256) != (len(data), upload.sha256)
    sb.move_document(doc_id, "777")
    assert target.fetch(doc_id, "12345") is None
    assert target.fetch(doc_id, "777") is not None
    sb.delete_document(doc_id)
    assert target.fetch(doc_id, "777") is None


def test_fetch_gets_a_new_token_once_and_classifies_trouble(
    sb: Sandbox, target_for: TargetFactory, make_upload: UploadFactory
) -> None:
    target = target_for(sb, "nymbl")
    doc_id = target.send(make_upload(patient_id="12345"))
    # Tokens revoked after the metadata GET: `$value` is refused once, then sent with a new one.
    sb.add_fault(Fault(api="nymbl", route="get", action="revoke"))
    assert target.fetch(doc_id, "12345") is not None
    assert [r.status for r in sb.requests("nymbl") if r.route == "value"] == [401, 200]
    sb.add_fault(Fault(api="nymbl", route="value", status=429, retry_after="3"))
    with pytest.raises(TransientError) as busy:
        target.fetch(doc_id, "12345")
    assert busy.value.retry_after == 3.0
    assert "12345" not in busy.value.message
    bad = target_for(sb, "nymbl", {"api_key": "wrong"})
    with pytest.raises(AuthError):
        bad.fetch(doc_id, "12345")
