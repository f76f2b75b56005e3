"""The status page over real HTTP on loopback: routes, the headers every answer carries, Basic
auth and lockout, CSRF on Retry, search by POST, and an access log without names."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import requests

from ingestd.config.model import Config, Paths
from ingestd.config.statuspage import PasswordHash, StatusPageConfig
from ingestd.filing.putback import retry_one
from ingestd.journal import Journal
from ingestd.journal.interface import JournalUnavailable
from ingestd.journal.postgres import PostgresJournal
from ingestd.journal.reader import JournalReader
from ingestd.observe.metrics import DaemonState
from ingestd.web.auth import MAX_FAILURES, Csrf, Gate, hash_password
from ingestd.web.server import HEADERS, Site, StatusPageServer
from ingestd.web.view import Gatherer, ViewCache
from tests.conftest import Tree, wait_for

FOLDER = "Andersson Anna"
NAME = "remiss från vc.pdf"
REASON = "the EHR refused the document (HTTP 422): bad title; fix the rule, then retry"
PASSWORD = "front desk secret"
STORED = hash_password(PASSWORD, n=2**10)


@dataclass
class Page:
    url: str
    tree: Tree
    journal: Journal
    site: Site

    def get(self, path: str = "/", **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def fail_a_file(tree: Tree, folder: str = FOLDER, name: str = NAME) -> Path:
    place = tree.failed / folder / name
    place.parent.mkdir(parents=True, exist_ok=True)
    place.write_bytes(b"%PDF-1.4 refused\n")
    receipt = {
        "status": "failed",
        "target": "leyr",
        "patient_id": "se_personal_number:191212121212",
        "source": f"{folder}/{name}",
        "file": name,
        "attempts": 1,
        "finished_at": "2026-12-04T08:00:00.000Z",
        "error": {"kind": "rejected", "message": REASON, "http_status": 422},
    }
    receipt_path = place.with_name(name + ".receipt.json")
    receipt_path.write_text(json.dumps(receipt))
    return receipt_path


def serve(tree: Tree, password: PasswordHash | None = None) -> Iterator[Page]:
    for folder in (tree.inbox, tree.done, tree.failed):
        folder.mkdir(parents=True, exist_ok=True)
    config = Config(
        file="c.yaml", paths=Paths(tree.inbox, tree.done, tree.failed, tree.state), targets={}
    )
    journal = Journal(tree.state)
    reader = JournalReader(tree.state)
    state = DaemonState(
        files={},
        oldest_waiting_seconds=0.0,
        last_scan_age_seconds=0.0,
        targets={
            "leyr": {"up": True, "misconfigured": False},
            "nymbl": {"up": False, "misconfigured": True, "reason": "HTTP 401 invalid_client"},
        },
        healthy=True,
    )
    settings = StatusPageConfig(("127.0.0.1", 0), "desk", password)
    site = Site(
        settings=lambda: settings,
        gate=Gate("desk", password),
        views=ViewCache(Gatherer(lambda: config, reader, lambda: state)),
        retry=lambda receipt: _retry(config, journal, receipt),
        csrf=Csrf(),
    )
    server = StatusPageServer(("127.0.0.1", 0), site).start()
    try:
        yield Page(f"http://127.0.0.1:{server.port}", tree, journal, site)
    finally:
        server.stop()
        reader.close()
        journal.close()


def _retry(config: Config, journal: Journal, receipt: Path) -> None:
    retry_one(config, journal, receipt)


@pytest.fixture
def page(tree: Tree) -> Iterator[Page]:
    yield from serve(tree)


@pytest.fixture
def locked_page(tree: Tree) -> Iterator[Page]:
    yield from serve(tree, STORED)


def form_value(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return found.group(1)


def retry_form(page: Page) -> tuple[requests.Session, dict[str, str]]:
    """A browser's session and the Retry form of the page's one failed file."""
    session = requests.Session()
    html = session.get(page.url + "/", timeout=10).text
    return session, {"file": form_value(html, "file"), "csrf": form_value(html, "csrf")}


def test_overview_shows_the_folder_the_failure_its_reason_and_the_targets(page: Page) -> None:
    fail_a_file(page.tree)
    page.tree.drop("Berg Nils/fax.tiff", b"II*\x00waiting")
    answer = page.get()
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    html = answer.text
    assert FOLDER in html
    assert NAME in html
    assert "bad title; fix the rule, then retry" in html
    assert "HTTP 422" in html
    assert "Berg Nils" in html
    assert "fax.tiff" in html
    assert "1 waiting" in html
    assert "1 failed" in html
    assert "credentials refused: HTTP 401 invalid_client" in html
    assert 'name="viewport"' in html
    assert 'href="/style.css"' in html
    # Forms carry opaque keys, never the name.
    key = form_value(html, "file")
    assert re.fullmatch(r"[0-9a-f]{64}", key)


def test_names_are_escaped(page: Page) -> None:
    fail_a_file(page.tree, "<b>x</b>", 'a&b"<script>.pdf')
    html = page.get().text
    assert "<script>.pdf" not in html
    assert "<b>x</b>" not in html
    assert "a&amp;b&quot;&lt;script&gt;.pdf" in html


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("HEAD", "/", 200),
        ("GET", "/style.css", 200),
        ("GET", "/refresh.js", 200),
        ("GET", "/nothing-here", 404),
        ("GET", "/search", 405),
        ("POST", "/", 405),
        ("POST", "/retry", 400),  # not a form
    ],
)
def test_every_answer_carries_the_security_headers(
    page: Page, method: str, path: str, status: int
) -> None:
    answer = requests.request(method, page.url + path, timeout=10)
    assert answer.status_code == status
    for name, value in HEADERS.items():
        assert answer.headers[name] == value
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["Server"].startswith("ingestd")


def test_a_session_cookie_is_httponly_and_samesite_strict(page: Page) -> None:
    cookie = page.get().headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    behind_tls = page.get(headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert "; Secure" in behind_tls


def test_retry_puts_the_file_back_with_a_valid_csrf_token_only(page: Page) -> None:
    receipt = fail_a_file(page.tree)
    failed_file = receipt.with_name(NAME)
    session = requests.Session()
    html = session.get(page.url + "/", timeout=10).text
    key, token = form_value(html, "file"), form_value(html, "csrf")

    for bad in ({"file": key}, {"file": key, "csrf": "0" * 64}):
        refused = session.post(page.url + "/retry", data=bad, timeout=10, allow_redirects=False)
        assert refused.status_code == 403
    stranger = requests.post(
        page.url + "/retry", data={"file": key, "csrf": token}, timeout=10, allow_redirects=False
    )  # the token without the session it belongs to
    assert stranger.status_code == 403
    assert failed_file.exists()
    assert receipt.exists()

    done = session.post(
        page.url + "/retry", data={"file": key, "csrf": token}, timeout=10, allow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["Location"] == "/"
    assert (page.tree.inbox / FOLDER / NAME).read_bytes() == b"%PDF-1.4 refused\n"
    assert not failed_file.exists()
    assert not receipt.exists()
    # As `ingestd retry` does: the old receipt waits in the journal for the next one's history.
    import hashlib

    sha = hashlib.sha256(b"%PDF-1.4 refused\n").hexdigest()
    [kept] = page.journal.take_retried(PurePosixPath(FOLDER, NAME), sha) or []
    assert kept["error"]["message"] == REASON

    again = session.post(
        page.url + "/retry", data={"file": key, "csrf": token}, timeout=10, allow_redirects=False
    )
    assert again.status_code == 404  # gone from failed/: nothing is put back twice
    assert "1 waiting" in session.get(page.url + "/", timeout=10).text


def test_search_is_a_post_and_finds_files_by_part_of_their_name(page: Page) -> None:
    fail_a_file(page.tree)
    page.tree.drop("Berg Nils/remiss 2.pdf", b"%PDF-1.4 waiting")
    page.tree.drop("Berg Nils/other.pdf", b"%PDF-1.4 waiting")
    answer = requests.post(page.url + "/search", data={"q": "REMISS"}, timeout=10)
    assert answer.status_code == 200
    assert "2 file(s) found" in answer.text
    assert NAME in answer.text
    assert "remiss 2.pdf" in answer.text
    assert "other.pdf" not in answer.text
    assert "Retry" in answer.text  # the failed one can be retried from the results
    none = requests.post(page.url + "/search", data={"q": "zzz"}, timeout=10)
    assert "0 file(s) found" in none.text


def test_a_query_string_changes_nothing_and_is_not_logged(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ingestd")
    fail_a_file(page.tree)
    assert page.get("/?q=" + NAME).status_code == 200
    assert page.get("/" + FOLDER).status_code == 404
    requests.post(page.url + "/search", data={"q": NAME}, timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "ingestd.status_page"]
    assert any("method=GET route=/ status=200" in line for line in lines)
    assert any("route=other status=404" in line for line in lines)
    assert any("method=POST route=/search status=200" in line for line in lines)
    for line in lines:
        assert "Andersson" not in line
        assert "remiss" not in line
        assert "q=" not in line


def test_without_credentials_a_password_protected_page_asks_for_them(locked_page: Page) -> None:
    fail_a_file(locked_page.tree)
    for path in ("/", "/style.css", "/nothing"):
        answer = locked_page.get(path)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="ingestd status"')
        assert answer.headers["Cache-Control"] == "no-store"
        assert FOLDER not in answer.text
    posted = requests.post(locked_page.url + "/search", data={"q": "remiss"}, timeout=10)
    assert posted.status_code == 401
    assert NAME not in posted.text
    good = locked_page.get(auth=("desk", PASSWORD))
    assert good.status_code == 200
    assert NAME in good.text


def test_without_a_password_only_a_loopback_host_is_answered(page: Page) -> None:
    """DNS rebinding: a site renamed to 127.0.0.1 sends its own name as Host; never answered."""
    fail_a_file(page.tree)
    port = page.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.5"):
        answer = page.get(headers={"Host": host})
        assert answer.status_code == 421, host
        assert FOLDER not in answer.text
        assert answer.headers["Cache-Control"] == "no-store"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST"):
        assert page.get(headers={"Host": host}).status_code == 200, host


def test_with_a_password_any_host_may_ask(locked_page: Page) -> None:
    """Behind a reverse proxy that sends the site's own name: the password decides."""
    answer = locked_page.get(headers={"Host": "intake.clinic.lan"}, auth=("desk", PASSWORD))
    assert answer.status_code == 200


def test_repeated_wrong_passwords_lock_out_and_are_logged_without_the_name(
    locked_page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    statuses = [
        locked_page.get(auth=("tried-name", f"guess {i}")).status_code for i in range(MAX_FAILURES)
    ]
    assert statuses == [401] * (MAX_FAILURES - 1) + [429]
    locked = locked_page.get(auth=("desk", PASSWORD))
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    text = caplog.text
    assert "event=status_page_login_failed client=127.0.0.1" in text
    assert "event=status_page_locked_out" in text
    assert "tried-name" not in text
    assert "guess" not in text


def test_a_double_click_on_retry_puts_the_file_back_once_without_an_error(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    receipt = fail_a_file(page.tree)
    session, form = retry_form(page)
    put_back = page.site.retry
    calls: list[Path] = []
    views = page.site.views
    looked: list[bool] = []

    class WatchedViews:
        """The site's views, noting each fresh look once it is done (a Retry's, before it
        waits its turn): noted when asked, the second look could still be reading failed/
        while the first click put the file back, and find it gone (404)."""

        def get(self, fresh: bool = False) -> object:
            view = views.get(fresh=fresh)
            looked.append(fresh)
            return view

        def forget(self) -> None:
            views.forget()

    page.site.views = WatchedViews()  # type: ignore[assignment]

    def first_one_slow(receipt: Path) -> None:
        calls.append(receipt)
        if len(calls) == 1:
            # The second click arrives while the first is under way.
            wait_for(lambda: looked.count(True) >= 2, timeout=10)
        put_back(receipt)

    page.site.retry = first_one_slow
    start = threading.Barrier(2)
    statuses: list[int] = []

    def click() -> None:
        start.wait()
        answer = session.post(page.url + "/retry", data=form, timeout=10, allow_redirects=False)
        statuses.append(answer.status_code)

    clicks = [threading.Thread(target=click) for _ in range(2)]
    for thread in clicks:
        thread.start()
    for thread in clicks:
        thread.join(10)
    assert statuses == [303, 303]
    assert len(calls) == 1
    assert (page.tree.inbox / FOLDER / NAME).read_bytes() == b"%PDF-1.4 refused\n"
    assert [p.name for p in (page.tree.inbox / FOLDER).iterdir()] == [NAME]
    assert not receipt.exists()
    assert "ERROR" not in caplog.text
    assert "status_page_retry_failed" not in caplog.text


class BrokenViews:
    def get(self, fresh: bool = False) -> None:
        raise OSError(errno.EIO, "Input/output error", f"/srv/intake/failed/{FOLDER}")

    def forget(self) -> None:
        pass


def test_an_unexpected_error_answers_500_and_logs_its_type_only(
    page: Page, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    page.site.views = BrokenViews()  # type: ignore[assignment]
    answer = page.get()
    assert answer.status_code == 500
    assert FOLDER not in answer.text
    assert "event=status_page_error reason=OSError" in caplog.text
    assert FOLDER not in caplog.text
    assert FOLDER not in capsys.readouterr().err


def test_the_server_logs_an_uncaught_error_by_its_type_without_a_traceback(
    page: Page, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    server = StatusPageServer(("127.0.0.1", 0), page.site)
    try:
        try:
            raise OSError(errno.EIO, "Input/output error", f"/srv/intake/failed/{FOLDER}")
        except OSError:
            server._server.handle_error(None, ("127.0.0.1", 40000))
    finally:
        server._server.server_close()
    assert "event=status_page_error reason=OSError" in caplog.text
    assert FOLDER not in caplog.text
    err = capsys.readouterr().err
    assert FOLDER not in err
    assert "Traceback" not in err


def test_a_fifo_in_failed_does_not_freeze_the_page(page: Page) -> None:
    fail_a_file(page.tree)
    fifo = page.tree.failed / FOLDER / "stuck.pdf.receipt.json"
    os.mkfifo(fifo)
    try:
        answer = requests.get(page.url + "/", timeout=5)
    finally:
        with contextlib.suppress(OSError):  # unblock a reader stuck on it, if any
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert answer.status_code == 200
    assert "1 failed" in answer.text


@pytest.mark.parametrize("status", ["<b>x</b>", "422<script>", True, 42.5, {"a": 1}])
def test_a_receipts_http_status_is_shown_only_as_a_number(page: Page, status: object) -> None:
    receipt = fail_a_file(page.tree)
    data = json.loads(receipt.read_text())
    data["error"]["http_status"] = status
    receipt.write_text(json.dumps(data))
    html = page.get().text
    assert "<b>x</b>" not in html
    assert "<script>" not in html
    assert "class=muted>(HTTP" not in html
    assert "1 failed" in html  # the failure itself is still listed


def test_a_numeric_http_status_is_shown(page: Page) -> None:
    fail_a_file(page.tree)
    assert "<span class=muted>(HTTP 422)</span>" in page.get().text


def test_retry_while_the_shared_journal_is_down_answers_503_and_moves_nothing(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    receipt = fail_a_file(page.tree)
    session, form = retry_form(page)
    config = Config(
        file="c.yaml",
        paths=Paths(page.tree.inbox, page.tree.done, page.tree.failed, page.tree.state),
        targets={},
    )
    down = PostgresJournal.__new__(PostgresJournal)
    down.link = DownLink()  # type: ignore[assignment]
    page.site.retry = lambda receipt: retry_one(config, down, receipt, wait=False)
    answer = session.post(page.url + "/retry", data=form, timeout=10, allow_redirects=False)
    assert answer.status_code == 503
    assert receipt.exists()
    assert receipt.with_name(NAME).exists()
    assert not (page.tree.inbox / FOLDER).exists()
    assert "event=status_page_retry_failed reason=JournalUnavailable" in caplog.text
    assert "ERROR" not in caplog.text


class DownLink:
    """A shared journal's link in an outage: waiting would never end."""

    where = "postgresql://db.example/ingestd"

    def run(self, sql: str, params: object = (), *, wait: bool) -> tuple[list[object], int]:
        if wait:
            raise AssertionError("the page's retry waited through the outage")
        raise JournalUnavailable(self.where)
