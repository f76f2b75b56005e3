"""The journal contract: the same behaviour from the SQLite file and the shared PostgreSQL
journal (a real server, tests/pg.py), so the daemon, pipeline and commands need not know which
one they have."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from ingestd.journal import ACTIVE_STATES, JournalLike, SharedJournal, open_journal

Opener = Callable[[], JournalLike]


@pytest.fixture(params=["sqlite", "postgresql"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the journal under test (again, as after a crash) on the same file or database."""
    opened: list[JournalLike] = []
    shared = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        shared = SharedJournal(postgres.url(postgres.new_database()))

    def opener() -> JournalLike:
        journal = open_journal(tmp_path / "state" / "journal.sqlite", shared, "i1")
        opened.append(journal)
        return journal

    yield opener
    for journal in opened:
        journal.close()


def _add(journal: JournalLike, name: str, **values: object) -> int:
    rel = PurePosixPath(name)
    return journal.add(
        rel, PurePosixPath(".ingestd/work/i1") / rel, "2026-01-01T00:00:00Z", **values
    ).id


def test_rows_round_trip_byte_for_byte_and_survive_reopening(reopen: Opener) -> None:
    journal = reopen()
    source = PurePosixPath("p1/ärende\udce4 'x'.pdf")  # not UTF-8, quotes, a space
    row = journal.add(
        source, PurePosixPath(".ingestd/work/i1/c"), "2026-01-01T00:00:00Z", owner_uid=7
    )
    assert row == journal.get(row.id)
    row = journal.change(row, state="claimed", decision={"rule": "r", "target": "leyr"})
    row = journal.change(row, sha256="ab", size=3, outcome_unknown=True, sent_at=1.5)
    row = journal.change(row, dest=PurePosixPath("p1/a (1).pdf"), history=[{"status": "failed"}])
    assert row == journal.get(row.id)
    journal.close()

    again = reopen()
    stored = again.get(row.id)
    assert stored == row
    assert stored is not None
    assert stored.source == source
    assert stored.outcome_unknown is True
    assert [r.id for r in again.active()] == [row.id] == [r.id for r in again.held()]
    again.update(row.id, state="uploaded", document_id="doc_1")
    again.update(row.id, state="done", finished_at="2026-01-01T00:00:05Z")
    assert again.active() == []
    assert again.held() == []
    assert again.counts() == {"done": 1}
    assert [r.id for r in again.recent("done")] == [row.id]
    assert [r.id for r in again.by_source(source)] == [row.id]


def test_due_rows_come_in_order_leaving_out_those_in_hand(reopen: Opener) -> None:
    journal = reopen()
    a, b, c = (_add(journal, f"p/{n}") for n in "abc")
    journal.update(a, state="claimed", next_attempt_at=100.0)
    journal.update(b, state="claimed", next_attempt_at=50.0)
    journal.update(c, state="done")
    assert [r.id for r in journal.due(75.0, set())] == [b]
    assert [r.id for r in journal.due(150.0, set())] == [b, a]
    assert journal.due(75.0, {b}) == []
    assert journal.next_due_time(set()) == 50.0
    assert journal.next_due_time({b}) == 100.0
    journal.make_due()
    assert [r.id for r in journal.due(0.0, set())] == [a, b]


def test_deleted_rows_are_gone_and_oldest_active_is_the_earliest_received(reopen: Opener) -> None:
    journal = reopen()
    first = journal.add(PurePosixPath("p/a"), PurePosixPath("w/a"), "2026-01-01T00:00:00Z").id
    journal.add(PurePosixPath("p/b"), PurePosixPath("w/b"), "2026-01-02T00:00:00Z")
    assert journal.oldest_active() == 1767225600.0
    journal.delete(first)
    assert journal.get(first) is None
    assert journal.oldest_active() == 1767312000.0
    assert journal.counts() == {"claiming": 1}


def test_retried_receipts_are_taken_once_and_only_for_that_content(reopen: Opener) -> None:
    journal = reopen()
    source = PurePosixPath("p/a.pdf")
    journal.keep_for_retry(source, "aa", [{"status": "failed", "n": 1}])
    journal.keep_for_retry(source, "aa", [{"status": "failed", "n": 2}])  # replaces
    assert journal.take_retried(source, "bb") is None
    assert journal.take_retried(source, "aa") == [{"status": "failed", "n": 2}]
    assert journal.take_retried(source, "aa") is None


def test_verified_documents_are_remembered_until_forgotten(reopen: Opener) -> None:
    journal = reopen()
    journal.mark_verified("leyr", "doc_1", "ab", "2026-01-01T00:00:00Z")
    journal.mark_verified("leyr", "doc_1", "ab", "2026-01-02T00:00:00Z")
    journal.close()
    again = reopen()
    assert again.verified_at("leyr", "doc_1", "ab") == "2026-01-02T00:00:00Z"
    assert again.verified_at("leyr", "doc_1", "cd") is None
    again.forget_verified("leyr", "doc_1", "ab")
    assert again.verified_at("leyr", "doc_1", "ab") is None


def test_unknown_columns_are_refused(reopen: Opener) -> None:
    journal = reopen()
    row_id = _add(journal, "p/a")
    with pytest.raises(ValueError, match="unknown journal columns"):
        journal.update(row_id, nonsense=1)


def test_every_active_state_counts_as_active(reopen: Opener) -> None:
    journal = reopen()
    for n, state in enumerate((*ACTIVE_STATES, "done", "failed")):
        journal.update(_add(journal, f"p/{n}"), state=state)
    assert sorted(r.state for r in journal.active()) == sorted(ACTIVE_STATES)
    assert sum(journal.counts().values()) == len(ACTIVE_STATES) + 2


def test_a_lone_instance_takes_nothing_over(reopen: Opener) -> None:
    journal = reopen()
    _add(journal, "p/a")
    journal.heartbeat()
    assert journal.take_over(0.0) == []


def test_staged_values_go_with_the_rows_next_write_and_a_crash_forgets_them(
    reopen: Opener,
) -> None:
    journal = reopen()
    row = journal.get(_add(journal, "p1/a.pdf"))
    assert row is not None
    decided = journal.stage(row, state="claimed", decision={"target": "leyr"})
    assert decided.decision == {"target": "leyr"}
    assert journal.get(row.id) == decided  # read through the journal: staged values included
    journal.close()
    again = reopen()  # a crash before the next write: the decision is worked out again
    stored = again.get(row.id)
    assert stored is not None
    assert (stored.state, stored.decision) == ("claiming", None)

    decided = again.stage(stored, state="claimed", decision={"target": "leyr"})
    again.update(row.id, state="uploading", sent_at=2.0)  # the write that takes them along
    again.close()
    stored = reopen().get(row.id)
    assert stored is not None
    assert (stored.state, stored.decision, stored.sent_at) == ("uploading", {"target": "leyr"}, 2.0)


def test_staged_values_are_returned_by_change_and_dropped_with_the_row(reopen: Opener) -> None:
    journal = reopen()
    row = journal.get(_add(journal, "p1/a.pdf"))
    assert row is not None
    journal.stage(row, decision={"target": "leyr"})
    changed = journal.change(row, state="rejected", error={"kind": "x"})
    assert changed.decision == {"target": "leyr"}  # `row` predates the staging
    assert journal.get(row.id) == changed
    other = journal.get(_add(journal, "p1/b.pdf"))
    assert other is not None
    journal.stage(other, decision={"target": "leyr"})
    journal.delete(other.id)
    assert journal.get(other.id) is None


def test_a_claim_never_says_no_receipts_are_kept_when_some_are(reopen: Opener) -> None:
    journal = reopen()
    journal.keep_for_retry(PurePosixPath("p/a.pdf"), "aa", [{"status": "failed"}])
    claimed = journal.add(PurePosixPath("p/a.pdf"), PurePosixPath("w/a"), "2026-01-01T00:00:00Z")
    assert claimed.retried  # the pipeline looks for them
    other = journal.add(PurePosixPath("p/b.pdf"), PurePosixPath("w/b"), "2026-01-01T00:00:00Z")
    if journal.shared:
        assert not other.retried  # the claim looked: no statement of its own later


def test_a_finished_row_reads_finished_at_once_and_after_reopening(reopen: Opener) -> None:
    journal = reopen()
    row = journal.get(_add(journal, "p1/a.pdf"))
    assert row is not None
    journal.change(row, state="uploaded", document_id="d1")
    journal.finished(row.id, "done")
    stored = journal.get(row.id)
    assert stored is not None
    assert stored.state == "done"
    assert row.id not in {r.id for r in journal.held()}
    assert journal.due(time.time(), set()) == []
    journal.close()  # writes what is pending
    stored = reopen().get(row.id)
    assert stored is not None
    assert stored.state == "done"


def test_a_name_held_by_another_unfinished_row_is_known(reopen: Opener) -> None:
    """How one instance of a fleet learns that another chose the same name in done/."""
    journal = reopen()
    name = PurePosixPath("p1/fax.pdf")
    mine = journal.add(PurePosixPath("p1/fax.pdf"), PurePosixPath("w/1"), "2026-01-01T00:00:00Z")
    other = journal.add(PurePosixPath("p1/x.pdf"), PurePosixPath("w/2"), "2026-01-01T00:00:00Z")
    mine = journal.change(mine, state="uploaded", dest=name)
    assert not journal.name_holders(mine.id, "uploaded", name)  # its own is not another's
    other = journal.change(other, state="rejected", dest=name)
    assert not journal.name_holders(mine.id, "uploaded", name)  # failed/, not done/
    other = journal.change(other, state="uploaded")
    assert journal.name_holders(mine.id, "uploaded", name) == [journal.get(other.id)]
    assert not journal.name_holders(mine.id, "uploaded", PurePosixPath("p1/fax (1).pdf"))
    journal.finished(other.id, "done")
    journal.close()
    assert not reopen().name_holders(mine.id, "uploaded", name)  # filed: no longer choosing
