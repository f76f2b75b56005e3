"""The journal's state machine survives reopening (a crash) at every step."""

import sqlite3
from pathlib import Path, PurePosixPath

import pytest

from ingestd.journal import Journal, JournalError


def test_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "state" / "journal.sqlite"
    journal = Journal(db)
    source = PurePosixPath("p1/ärende\udce4.pdf")
    row_id = journal.add(
        source, PurePosixPath(".ingestd/work/i/c") / source, "2026-01-01T00:00:00Z"
    ).id
    journal.update(row_id, state="claimed")
    journal.update(row_id, decision={"rule": "r", "target": "leyr"}, sha256="ab", size=3)
    journal.update(row_id, state="uploading", attempts=1)
    journal.close()

    reopened = Journal(db)
    row = reopened.get(row_id)
    assert row is not None
    assert row.source == source
    assert row.state == "uploading"
    assert row.attempts == 1
    assert row.decision == {"rule": "r", "target": "leyr"}
    assert [r.id for r in reopened.active()] == [row_id]
    reopened.update(row_id, state="uploaded", document_id="doc_1")
    reopened.update(row_id, state="done")
    assert reopened.active() == []
    assert reopened.counts() == {"done": 1}
    assert (db.stat().st_mode & 0o077) == 0


def test_due_respects_next_attempt_and_rows_in_hand(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    a = journal.add(PurePosixPath("p/a"), PurePosixPath("w/a"), "t").id
    b = journal.add(PurePosixPath("p/b"), PurePosixPath("w/b"), "t").id
    journal.update(a, state="claimed", next_attempt_at=100.0)
    journal.update(b, state="claimed", next_attempt_at=50.0)
    assert [r.id for r in journal.due(75.0, set())] == [b]
    assert journal.due(75.0, {b}) == []
    assert journal.next_due_time(set()) == 50.0
    assert journal.next_due_time({b}) == 100.0


def test_rows_held_in_memory_match_what_is_stored(tmp_path: Path) -> None:
    """`add` and `change` return rows without reading them back: they must be what a re-read
    would give, or the pipeline would act on a state that is not the journal's."""
    journal = Journal(tmp_path / "j.sqlite")
    row = journal.add(PurePosixPath("p/a b.pdf"), PurePosixPath("w/x~p%2Fa"), "t", owner_uid=7)
    assert row == journal.get(row.id)
    row = journal.change(row, state="claimed", decision={"target": "leyr"}, outcome_unknown=True)
    row = journal.change(row, dest=PurePosixPath("p/a b (1).pdf"), history=[{"status": "failed"}])
    assert row == journal.get(row.id)
    assert row.state == "claimed"
    assert row.dest == PurePosixPath("p/a b (1).pdf")


def test_retried_receipts_are_taken_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    source = PurePosixPath("p/a.pdf")
    journal.keep_for_retry(source, "ab" * 32, [{"status": "failed"}])
    assert journal.take_retried(source, "cd" * 32) is None  # other content: not this file
    assert journal.take_retried(source, "ab" * 32) == [{"status": "failed"}]
    assert journal.take_retried(source, "ab" * 32) is None
    # The delete committed: a reopened journal has no such receipts either.
    journal.close()
    assert Journal(tmp_path / "j.sqlite").take_retried(source, "ab" * 32) is None


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    with pytest.raises(ValueError, match="unknown journal columns"):
        journal.update(1, nonsense=1)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "j.sqlite"
    Journal(db)._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(JournalError, match="upgrade ingestd"):
        Journal(db)


SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE files (
    id INTEGER PRIMARY KEY, source BLOB NOT NULL, work BLOB NOT NULL UNIQUE, state TEXT NOT NULL,
    size INTEGER, sha256 TEXT, format TEXT, patient_id TEXT, decision TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, outcome_unknown INTEGER NOT NULL DEFAULT 0,
    document_id TEXT, error TEXT, dest BLOB, history TEXT, received_at TEXT NOT NULL,
    finished_at TEXT, next_attempt_at REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL
);
INSERT INTO files (source, work, state, received_at, updated_at)
    VALUES (X'70312f612e706466', X'772f61', 'uploading', 't', 0);
"""


def test_a_version_1_journal_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as old:
        old.executescript(SCHEMA_V1)
    journal = Journal(db)
    [row] = journal.active()
    assert row.source == PurePosixPath("p1/a.pdf")
    assert row.state == "uploading"
    assert row.owner_uid is None
    journal.update(row.id, owner_uid=1000)
    assert journal.get(row.id).owner_uid == 1000  # type: ignore[union-attr]
    version = journal._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == ("4",)
    assert row.sent_at is None
    assert row.converted_sha256 is None
    assert row.converted_pages is None
    journal.update(row.id, converted_format="application/pdf", converted_sha256="ab" * 32,
                   converted_size=10, converted_pages=3)  # fmt: skip
    kept = journal.get(row.id)
    assert kept is not None
    assert (kept.converted_sha256, kept.converted_pages) == ("ab" * 32, 3)


def test_receipts_kept_for_a_retried_file_are_taken_once_and_only_for_that_content(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    source = PurePosixPath("p1/a.pdf")
    journal.keep_for_retry(source, "abc", [{"status": "failed"}])
    assert journal.take_retried(source, "other content") is None
    assert journal.take_retried(source, "abc") == [{"status": "failed"}]
    assert journal.take_retried(source, "abc") is None


def test_verified_times_survive_reopening_and_an_older_journal_gets_the_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.close()
    with sqlite3.connect(path) as db:  # a journal as an ingestd before `verify` left it
        db.execute("DROP TABLE verified")
    journal = Journal(path)
    assert journal.verified_at("leyr", "doc_1", "ab") is None
    journal.mark_verified("leyr", "doc_1", "ab", "2026-12-04T20:00:00.000Z")
    journal.close()
    journal = Journal(path)
    assert journal.verified_at("leyr", "doc_1", "ab") == "2026-12-04T20:00:00.000Z"
    assert journal.verified_at("leyr", "doc_1", "other content") is None
    journal.forget_verified("leyr", "doc_1", "ab")
    assert journal.verified_at("leyr", "doc_1", "ab") is None
    journal.close()
