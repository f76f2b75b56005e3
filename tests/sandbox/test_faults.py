"""Fault injection, the HTTP control plane and the server itself: keep-alive, stop, request log."""

from __future__ import annotations

import base64
import http.client
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from ingestd.sandbox import SANDBOX_CREDENTIALS, Fault, RequestRecord, Sandbox

from . import LEYR, leyr_docs_url
from . import LEYR_HEADERS as HEADERS

NYMBL = SANDBOX_CREDENTIALS["nymbl"]
PAYLOAD = {"content": base64.b64encode(b"%PDF-1.7").decode(), "format": "application/pdf"}
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def docs_url(sb: Sandbox, pid: str = "abc_1") -> str:
    return leyr_docs_url(sb, pid)


def upload(sb: Sandbox, title: str = "Lab") -> requests.Response:
    return requests.post(
        docs_url(sb), headers=HEADERS, json={**PAYLOAD, "title": title}, timeout=10
    )


def listing(sb: Sandbox) -> requests.Response:
    return requests.get(docs_url(sb), headers=HEADERS, timeout=10)


def nymbl_token(sb: Sandbox) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": NYMBL["client_id"],
        "client_secret": NYMBL["client_secret"],
    }
    return requests.post(sb.nymbl_token_url, data=form, timeout=10)


def nymbl_upload(sb: Sandbox, token: str) -> requests.Response:
    return requests.post(
        f"{sb.nymbl_base_url}/Patients(42)/Documents",
        headers={"Authorization": f"Bearer {token}", "x-api-key": NYMBL["api_key"]},
        files={"file": ("a.pdf", b"%PDF", "application/pdf")},
        timeout=10,
    )


# --- fault actions ------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["7", HTTP_DATE])
def test_status_fault_with_retry_after(sb: Sandbox, retry_after: str) -> None:
    sb.add_fault(
        Fault(api="leyr", route="upload", action="status", status=503, retry_after=retry_after)
    )
    response = upload(sb)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == retry_after
    assert response.json()["error"]
    assert sb.documents() == []
    assert upload(sb).status_code == 201
    assert [r.status for r in sb.requests("leyr")] == [503, 201]


def test_status_fault_without_retry_after(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route=None, action="status", status=429))
    response = listing(sb)
    assert response.status_code == 429
    assert "Retry-After" not in response.headers


def test_delay_fault_then_normal_handling(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route="upload", action="delay", delay_seconds=0.3))
    started = time.monotonic()
    assert upload(sb).status_code == 201
    assert time.monotonic() - started >= 0.3
    assert len(sb.documents()) == 1


def test_drop_fault_stores_nothing(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route="upload", action="drop"))
    with pytest.raises(requests.ConnectionError):
        upload(sb)
    assert sb.documents() == []
    assert sb.requests("leyr")[-1] == RequestRecord("leyr", "POST", "upload", 0, "abc_1")
    assert upload(sb).status_code == 201


def test_commit_drop_fault_stores_the_document(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route="upload", action="commit_drop"))
    with pytest.raises(requests.ConnectionError):
        upload(sb, title="Committed")
    [doc] = sb.documents()
    assert doc.title == "Committed"
    assert [item["title"] for item in listing(sb).json()["items"]] == ["Committed"]


def test_times_two_then_normal(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route="upload", action="status", status=502, times=2))
    assert [upload(sb).status_code for _ in range(3)] == [502, 502, 201]


def test_times_none_lasts_until_cleared(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", action="status", status=500, times=None))
    assert [upload(sb).status_code for _ in range(4)] == [500] * 4
    sb.clear_faults()
    assert upload(sb).status_code == 201


def test_faults_apply_in_the_order_added(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", action="status", status=500))
    sb.add_fault(Fault(api="leyr", action="status", status=502))
    assert [upload(sb).status_code for _ in range(3)] == [500, 502, 201]


def test_fault_only_matches_its_api_and_route(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="leyr", route="upload", action="status", status=503))
    sb.add_fault(Fault(api="nymbl", action="status", status=500))
    assert listing(sb).status_code == 200
    assert nymbl_token(sb).status_code == 200
    assert upload(sb).status_code == 503


def test_token_and_any_faults(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="token", action="status", status=503, retry_after="1"))
    assert nymbl_token(sb).status_code == 503
    token = nymbl_token(sb).json()["access_token"]
    sb.add_fault(Fault(api="any", action="drop"))
    with pytest.raises(requests.ConnectionError):
        nymbl_upload(sb, token)
    assert nymbl_upload(sb, token).status_code == 201
    assert [r.api for r in sb.requests() if r.status == 0] == ["nymbl"]


def test_control_plane_is_never_faulted(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="any", action="status", status=500, times=None))
    assert requests.get(f"{sb.url}/_sandbox/documents", timeout=10).status_code == 200
    assert requests.delete(f"{sb.url}/_sandbox/faults", timeout=10).status_code == 204
    assert upload(sb).status_code == 201


def test_invalid_faults_are_refused() -> None:
    bad: list[dict[str, Any]] = [
        {"api": "control"},
        {"api": "leyr", "action": "explode"},
        {"api": "leyr", "times": 0},
        {"api": "leyr", "status": 99},
        {"api": "leyr", "delay_seconds": -1},
        {"api": "leyr", "retry_after": "1\r\nX-Evil: 1"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):  # noqa: PT011 - each refusal has its own message
            Fault(**kwargs)


# --- control plane ------------------------------------------------------------------------------


def test_control_plane_faults(sb: Sandbox) -> None:
    fault = {
        "api": "leyr",
        "route": "upload",
        "action": "status",
        "status": 503,
        "retry_after": "2",
        "times": 2,
    }
    assert requests.post(f"{sb.url}/_sandbox/faults", json=fault, timeout=10).status_code == 204
    pending = requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()
    assert pending[0]["status"] == 503
    first = upload(sb)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "2")
    assert requests.delete(f"{sb.url}/_sandbox/faults", timeout=10).status_code == 204
    assert upload(sb).status_code == 201
    for bad in ({"api": "leyr", "colour": "red"}, {"route": "upload"}, [], {"api": "x"}):
        assert requests.post(f"{sb.url}/_sandbox/faults", json=bad, timeout=10).status_code == 400
    garbage = requests.post(f"{sb.url}/_sandbox/faults", data=b"{", timeout=10)
    assert garbage.status_code == 400


def test_control_plane_documents_requests_and_reset(sb: Sandbox) -> None:
    doc_id = upload(sb).json()["id"]
    docs = requests.get(f"{sb.url}/_sandbox/documents", timeout=10).json()
    assert len(docs) == 1
    assert docs[0]["id"] == doc_id
    assert docs[0]["sha256"] == sb.documents()[0].sha256
    assert docs[0]["api"] == "leyr"
    assert "content" not in docs[0]
    assert requests.get(f"{sb.url}/_sandbox/documents?api=nymbl", timeout=10).json() == []

    log = requests.get(f"{sb.url}/_sandbox/requests?api=leyr", timeout=10).json()
    assert log == [
        {"api": "leyr", "method": "POST", "route": "upload", "status": 201, "patient_id": "abc_1"}
    ]
    sb.add_fault(Fault(api="leyr", action="status"))
    assert requests.post(f"{sb.url}/_sandbox/reset", timeout=10).status_code == 204
    assert sb.documents() == []
    assert upload(sb).status_code == 201  # the fault went with the reset
    assert requests.get(f"{sb.url}/_sandbox/nothing", timeout=10).status_code == 404
    assert requests.get(f"{sb.url}/_sandbox/reset", timeout=10).status_code == 405


def test_request_log(sb: Sandbox) -> None:
    upload(sb)
    listing(sb)
    requests.get(docs_url(sb, "bad id"), headers=HEADERS, timeout=10)
    requests.get(docs_url(sb), timeout=10)
    token = nymbl_token(sb).json()["access_token"]
    nymbl_upload(sb, token)
    requests.get(f"{sb.url}/_sandbox/documents", timeout=10)
    assert sb.requests("leyr") == [
        RequestRecord("leyr", "POST", "upload", 201, "abc_1"),
        RequestRecord("leyr", "GET", "list", 200, "abc_1"),
        RequestRecord("leyr", "GET", "list", 400, "bad id"),
        RequestRecord("leyr", "GET", "list", 401, "abc_1"),
    ]
    assert sb.requests("token") == [RequestRecord("token", "POST", "token", 200, None)]
    assert sb.requests("nymbl") == [RequestRecord("nymbl", "POST", "upload", 201, "42")]
    assert sb.requests("control") == [RequestRecord("control", "GET", "documents", 200, None)]
    assert len(sb.requests()) == 7


# --- server behaviour ---------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(sb: Sandbox) -> None:
    parts = urlsplit(docs_url(sb))
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", parts.path, headers=HEADERS)
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") is not None
            response.read()
        first_socket = conn.sock
        conn.request(
            "POST", parts.path, body=b"{", headers={**HEADERS, "Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 400
        response.read()
        conn.request("DELETE", parts.path + "/doc_x", headers=HEADERS)
        response = conn.getresponse()
        assert response.status == 404
        response.read()
        assert conn.sock is first_socket
    finally:
        conn.close()


def test_concurrent_uploads_on_kept_alive_connections(sb: Sandbox) -> None:
    def worker(index: int) -> list[str]:
        with requests.Session() as session:
            return [
                session.post(
                    docs_url(sb, f"p_{index}"),
                    headers=HEADERS,
                    json={**PAYLOAD, "title": f"t{index}-{n}"},
                    timeout=10,
                ).json()["id"]
                for n in range(5)
            ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = [doc_id for batch in pool.map(worker, range(16)) for doc_id in batch]
    assert len(set(ids)) == 80
    assert sorted(doc.id for doc in sb.documents()) == sorted(ids)


def test_latency_is_added_to_uploads() -> None:
    with Sandbox(latency_seconds=0.25) as sb:
        started = time.monotonic()
        assert upload(sb).status_code == 201
        assert time.monotonic() - started >= 0.25
        assert "0.25" in sb.describe()


def test_stop_closes_kept_alive_connections() -> None:
    sb = Sandbox().start()
    session = requests.Session()
    assert session.get(docs_url(sb), headers=HEADERS, timeout=10).status_code == 200
    sb.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(docs_url(sb), headers=HEADERS, timeout=10)
    sb.stop()  # idempotent


def test_urls_and_describe(sb: Sandbox) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sb.url)
    assert sb.leyr_base_url == sb.url + "/leyr/api"
    assert sb.nymbl_base_url == sb.url + "/nymbl"
    assert sb.nymbl_token_url == sb.url + "/nymbl/oauth2/token"
    text = sb.describe()
    for needle in (sb.leyr_base_url, sb.nymbl_token_url, *LEYR.values(), *NYMBL.values()):
        assert needle in text
    with pytest.raises(RuntimeError):
        _ = Sandbox().url


def test_serve_forever_stops_on_sigterm() -> None:
    code = (
        "from ingestd.sandbox import serve_forever; serve_forever('127.0.0.1', 0, announce=print)"
    )
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first_line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", first_line)
        assert match, first_line
        assert requests.get(f"{match.group()}/_sandbox/documents", timeout=10).json() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_revoke_fault_issues_a_token_that_is_already_revoked(sb: Sandbox) -> None:
    sb.add_fault(Fault(api="token", route="token", action="revoke"))
    revoked = nymbl_token(sb)
    assert revoked.status_code == 200  # the client cannot tell from the answer
    assert nymbl_upload(sb, revoked.json()["access_token"]).status_code == 401
    fresh = nymbl_token(sb).json()["access_token"]
    assert nymbl_upload(sb, fresh).status_code == 201
    assert len(sb.documents("nymbl")) == 1


def test_proxy_body_limit_refuses_a_larger_body_unread() -> None:
    with Sandbox(port=0, proxy_body_limit=1024) as sb:
        big = requests.post(
            docs_url(sb), headers=HEADERS, json={**PAYLOAD, "title": "x" * 2000}, timeout=10
        )
        assert big.status_code == 413
        assert sb.documents() == []
        assert upload(sb).status_code == 201
