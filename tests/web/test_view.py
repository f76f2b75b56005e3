"""The page's view: files per patient folder from the inbox, the journal (read-only, its own
connection) and failed/; today's done only; the cache that spares the journal."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd.clock import utc_iso
from ingestd.config.model import Config, Paths
from ingestd.journal import Journal, SharedJournal, open_journal
from ingestd.journal.reader import JournalReader, JournalView, SharedJournalView
from ingestd.observe.metrics import DaemonState
from ingestd.web.view import Gatherer, View, ViewCache, target_state
from tests.conftest import Tree
from tests.pg import Postgres
from tests.web.test_server import FOLDER, NAME, fail_a_file


@pytest.fixture
def journal(tree: Tree) -> Iterator[Journal]:
    journal = Journal(tree.state)
    yield journal
    journal.close()


def gatherer(tree: Tree, reader: JournalView | None = None) -> Gatherer:
    config = Config(
        file="c.yaml", paths=Paths(tree.inbox, tree.done, tree.failed, tree.state), targets={}
    )
    state = DaemonState({}, 0.0, None, {"leyr": {"up": True, "misconfigured": False}}, True)
    return Gatherer(lambda: config, reader or JournalReader(tree.state), lambda: state)


def row(journal: Journal, source: str, state: str, finished: float | None = None) -> None:
    work = PurePosixPath(".ingestd/work", source)
    added = journal.add(PurePosixPath(source), work, utc_iso(time.time() - 90))
    if state != "claiming":
        journal.update(added.id, state=state, finished_at=utc_iso(finished))


def test_every_state_lands_in_its_folder(tree: Tree, journal: Journal) -> None:
    tree.drop("p_1/waiting.pdf", b"%PDF-1.4")
    tree.drop("loose.pdf", b"%PDF-1.4")  # inbox root: no patient folder
    row(journal, "p_1/sending.pdf", "uploading")
    row(journal, "p_2/today.pdf", "done", time.time())
    row(journal, "p_2/last-week.pdf", "done", time.time() - 8 * 86400)
    fail_a_file(tree)
    view = gatherer(tree)()
    folders = {f.name: f for f in view.folders}
    assert set(folders) == {"", "p_1", "p_2", FOLDER}
    assert [i.name for i in folders["p_1"].items["waiting"]] == ["waiting.pdf"]
    assert [i.name for i in folders["p_1"].items["in_progress"]] == ["sending.pdf"]
    assert [i.name for i in folders["p_2"].items["done_today"]] == ["today.pdf"]
    assert [i.name for i in folders[""].items["waiting"]] == ["loose.pdf"]
    [failed] = folders[FOLDER].items["failed"]
    assert failed.name == NAME
    assert failed.kind == "rejected"
    assert failed.http_status == 422
    assert view.total("done_today") == 1
    assert view.oldest_waiting is not None
    assert time.time() - view.oldest_waiting >= 89
    assert [t.state for t in view.targets] == ["up"]


def test_failed_keys_are_opaque_and_found_again(tree: Tree, journal: Journal) -> None:
    fail_a_file(tree)
    view = gatherer(tree)()
    [item] = view.folders[0].items["failed"]
    assert NAME not in item.key
    assert FOLDER not in item.key
    assert view.failed_item(item.key) is item
    assert view.failed_item("0" * 64) is None
    assert [i.name for i in view.search("FRÅN")] == [NAME]
    assert view.search("  ") == []


def test_a_missing_inbox_is_a_problem_not_a_crash(tree: Tree, journal: Journal) -> None:
    tree.inbox.rmdir()
    view = gatherer(tree)()
    assert view.folders == []


def test_the_reader_is_read_only(tree: Tree, journal: Journal) -> None:
    import sqlite3

    reader = JournalReader(tree.state)
    with pytest.raises(sqlite3.OperationalError):
        reader._db.execute("DELETE FROM files")
    reader.close()


@pytest.mark.parametrize(
    ("health", "state", "why"),
    [
        ({"up": True}, "up", "taking uploads"),
        ({"up": False, "misconfigured": True, "reason": "HTTP 401"}, "misconfigured", "HTTP 401"),
        ({"up": False, "misconfigured": False, "reason": "HTTP 503"}, "paused", "HTTP 503"),
    ],
)
def test_target_states(health: dict[str, object], state: str, why: str) -> None:
    found = target_state("leyr", health)
    assert found.state == state
    assert why in found.why


def test_the_cache_gathers_once_for_many_viewers(tmp_path: Path) -> None:
    calls: list[float] = []

    def gather() -> View:
        calls.append(time.monotonic())
        return View(time.time(), [], [])

    cache = ViewCache(gather, seconds=60)
    first = cache.get()
    assert all(cache.get() is first for _ in range(20))
    assert len(calls) == 1
    assert cache.get(fresh=True) is not first
    cache.forget()
    cache.get()
    assert len(calls) == 3


def test_with_a_shared_journal_the_page_shows_the_whole_fleet(
    tree: Tree, postgres: Postgres, pg_db: str
) -> None:
    """Rows held by another instance show; in an outage the page says so at once, not hang."""
    url = postgres.url(pg_db)
    other = open_journal(tree.state, SharedJournal(url), "host-a")
    mine = open_journal(tree.state, SharedJournal(url), "host-b")
    try:
        work = PurePosixPath(".ingestd/work/host-a")
        sending = other.add(
            PurePosixPath("p_1/sending.pdf"), work / "1", utc_iso(time.time() - 60), "1:1"
        )
        other.update(sending.id, state="uploading")
        done = other.add(PurePosixPath("p_2/today.pdf"), work / "2", utc_iso(time.time()), "2:2")
        other.update(done.id, state="done", finished_at=utc_iso(time.time()))
        page = gatherer(tree, SharedJournalView(mine))
        folders = {f.name: f for f in page().folders}
        assert [i.name for i in folders["p_1"].items["in_progress"]] == ["sending.pdf"]
        assert [i.name for i in folders["p_2"].items["done_today"]] == ["today.pdf"]
        postgres.stop()
        try:
            started = time.monotonic()
            view = page()
            assert time.monotonic() - started < 5
            assert "shared journal is not answering" in view.problem
        finally:
            postgres.start()
    finally:
        other.close()
        mine.close()


def test_a_failed_folder_that_stops_answering_is_a_problem_not_a_crash(
    tree: Tree, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_a_file(tree)
    fail_a_file(tree, folder="p_2")
    real_scandir = os.scandir
    down = tree.failed / FOLDER

    def scandir(path: Any = ".") -> Any:
        if Path(path) == down:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    view = gatherer(tree)()
    assert "failed/ is not answering" in view.problem
    assert not view.healthy
    assert [f.name for f in view.folders] == ["p_2"]


def test_a_fifo_named_like_a_receipt_does_not_block_the_view(tree: Tree, journal: Journal) -> None:
    fail_a_file(tree)
    fifo = tree.failed / FOLDER / "stuck.pdf.receipt.json"
    os.mkfifo(fifo)
    views: list[View] = []
    gathering = threading.Thread(target=lambda: views.append(gatherer(tree)()), daemon=True)
    gathering.start()
    gathering.join(5)
    if gathering.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert views, "the view blocked on a FIFO"
    [folder] = views[0].folders
    assert [i.name for i in folder.items["failed"]] == [NAME]
