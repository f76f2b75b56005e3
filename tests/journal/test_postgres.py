"""The shared journal on a real PostgreSQL (tests/pg.py): one claim per file across instances,
takeover of a dead instance's rows by exactly one survivor (the database's clock decides), a
taken-over row refused to its old holder, outages waited out, and clear errors at opening."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import PurePosixPath

import pytest

from ingestd.journal import (
    AlreadyClaimed,
    ClaimLost,
    JournalError,
    JournalRefused,
    JournalUnavailable,
    JournalUnreachable,
    SharedJournal,
    open_journal,
)
from ingestd.journal.pglink import Link
from ingestd.journal.postgres import PostgresJournal
from tests.conftest import wait_for
from tests.pg import PASSWORD, PASSWORD_ROLE, Postgres

pytestmark = pytest.mark.usefixtures("postgres")


def _journal(url: str, instance: str | None) -> PostgresJournal:
    journal = open_journal(PurePosixPath("unused"), SharedJournal(url), instance)  # type: ignore[arg-type]
    assert isinstance(journal, PostgresJournal)
    return journal


def _claim(journal: PostgresJournal, name: str, identity: str = "3:1") -> int:
    rel = PurePosixPath(name)
    work = PurePosixPath(".ingestd/work") / str(journal.instance) / f"{time.monotonic_ns()}-{name}"
    return journal.add(rel, work, "2026-01-01T00:00:00Z", identity=identity).id


def test_one_file_is_claimed_by_one_instance_until_its_row_is_finished(
    postgres: Postgres, pg_db: str
) -> None:
    a, b = _journal(postgres.url(pg_db), "a"), _journal(postgres.url(pg_db), "b")
    first = _claim(a, "p/x.pdf")
    with pytest.raises(AlreadyClaimed):
        _claim(b, "p/x.pdf")
    _claim(b, "p/x.pdf", identity="4:2")  # another file at that path: its own claim
    a.update(first, state="done")
    _claim(b, "p/x.pdf")  # finished: the same file put back (`ingestd retry`) is claimed anew
    assert {r.holder for r in b.active()} == {"b"}
    assert [r.holder for r in a.recent("done")] == ["a"]


def _long_connected(journal: PostgresJournal) -> PostgresJournal:
    """As if its connection had been up for an hour (a takeover waits for a lease of that)."""
    journal.link._up_since -= 3600
    return journal


def _make_dead(postgres: Postgres, db: str, instance: str) -> None:
    postgres.sql(
        f"UPDATE instances SET seen_at = now() - interval '1 hour' WHERE id = '{instance}'", db
    )


def test_a_dead_instances_rows_go_to_exactly_one_survivor(postgres: Postgres, pg_db: str) -> None:
    url = postgres.url(pg_db)
    dead = _journal(url, "dead")
    rows = {
        state: _claim(dead, f"p/{state}") for state in ("claiming", "claimed", "uploading", "done")
    }
    for state, row_id in rows.items():
        if state != "claiming":
            dead.update(row_id, state=state, next_attempt_at=9e9)
    survivors = [_long_connected(_journal(url, f"s{n}")) for n in range(4)]
    assert all(s.take_over(600) == [] for s in survivors)  # its heartbeat is fresh: alive
    _make_dead(postgres, pg_db, "dead")
    # Connected for less than the lease (just started, or the database just came back): the
    # dead-looking instance may simply not have had the chance to heartbeat yet.
    assert _journal(url, "new").take_over(600) == []

    taken: dict[str, list[int]] = {}
    start = threading.Barrier(len(survivors))

    def take(survivor: PostgresJournal) -> None:
        start.wait()
        taken[str(survivor.instance)] = [r.id for r in survivor.take_over(600)]

    threads = [threading.Thread(target=take, args=(s,)) for s in survivors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [name for name, ids in taken.items() if ids]
    assert len(winners) == 1, taken
    winner = next(s for s in survivors if s.instance == winners[0])
    assert sorted(taken[winners[0]]) == sorted(
        rows[s] for s in ("claiming", "claimed", "uploading")
    )
    held = {r.state: r for r in winner.held()}
    assert held["uploading"].outcome_unknown  # the EHR is asked before anything is sent again
    assert not held["claimed"].outcome_unknown
    assert all(r.next_attempt_at == 0 for r in held.values())  # due at once
    assert winner.get(rows["done"]).holder == "dead"  # type: ignore[union-attr]

    # The old holder comes back: its rows are not its own any more.
    with pytest.raises(ClaimLost):
        dead.update(rows["uploading"], state="uploaded", document_id="doc_1")
    dead.delete(rows["claimed"])
    assert winner.get(rows["claimed"]) is not None
    assert dead.held() == []
    assert winner.get(rows["uploading"]).state == "uploading"  # type: ignore[union-attr]


def test_rows_of_an_instance_that_left_are_taken_over(postgres: Postgres, pg_db: str) -> None:
    url = postgres.url(pg_db)
    leaving = _journal(url, "leaving")
    _claim(leaving, "p/a")
    leaving.leave()  # a row is parked here: it stays registered
    assert _long_connected(_journal(url, "other")).take_over(600) == []
    leaving.update(leaving.held()[0].id, state="done")
    leaving.leave()
    assert [m["instance"] for m in leaving.members()] == ["other"]


def test_an_outage_stops_claims_and_waits_to_record_outcomes(
    postgres: Postgres, pg_db: str
) -> None:
    journal = _journal(postgres.url(pg_db), "a")
    row_id = _claim(journal, "p/a")
    journal.update(row_id, state="uploading", next_attempt_at=5.0)
    assert journal.counts() == {"uploading": 1}
    postgres.stop()
    recorded = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(JournalUnavailable):
            _claim(journal, "p/b")  # nothing new is claimed
        assert time.monotonic() - started < 5
        assert journal.due(10.0, set()) == []
        assert journal.counts() == {"uploading": 1}  # the last counts seen

        def record() -> None:
            journal.update(row_id, state="uploaded", document_id="doc_1")
            recorded.set()

        threading.Thread(target=record, daemon=True).start()
        assert not recorded.wait(1.0)  # waits for the database, the outcome kept in hand
    finally:
        postgres.start()
    wait_for(recorded.is_set, timeout=15)
    row = journal.get(row_id)
    assert row is not None
    assert (row.state, row.document_id) == ("uploaded", "doc_1")
    _claim(journal, "p/b")  # claims again


def test_a_role_that_owns_its_database_works_over_tcp_with_its_password(
    postgres: Postgres,
) -> None:
    """The README's setup: a role that is no superuser, owning the journal's database."""
    name = f"fleet_{int(time.time() * 1000) % 10**8}"
    postgres.sql(f"CREATE DATABASE {name} OWNER {PASSWORD_ROLE}")
    url = postgres.url(name, tcp=True, user=PASSWORD_ROLE)
    journal = open_journal(PurePosixPath("x"), SharedJournal(url, PASSWORD), "a")  # type: ignore[arg-type]
    journal.update(_claim(journal, "p/a"), state="claimed")  # type: ignore[arg-type]
    assert journal.counts() == {"claimed": 1}
    journal.close()


@pytest.mark.parametrize("password", ["wrong-Pa55word", None])
def test_a_refused_password_fails_clearly_without_echoing_it(
    postgres: Postgres, password: str | None
) -> None:
    url = postgres.url("postgres", tcp=True, user=PASSWORD_ROLE)
    with pytest.raises(JournalError) as caught:
        open_journal(PurePosixPath("x"), SharedJournal(url, password), "a")  # type: ignore[arg-type]
    assert not isinstance(caught.value, JournalUnreachable)  # the config: exit 2, no restart
    message = str(caught.value)
    assert message.startswith(
        f"cannot open journal {PASSWORD_ROLE}@127.0.0.1:{postgres.port}/postgres: "
    )
    assert "password" in message
    assert "wrong-Pa55word" not in message


def test_an_unreachable_server_fails_clearly() -> None:
    with pytest.raises(
        JournalUnreachable, match=r"cannot open journal u@127\.0\.0\.1:1/x: .*refused"
    ):
        open_journal(PurePosixPath("x"), SharedJournal("postgresql://u@127.0.0.1:1/x"), "a")  # type: ignore[arg-type]


def test_the_live_instances_are_those_within_the_lease_by_the_databases_clock(
    postgres: Postgres, pg_db: str
) -> None:
    url = postgres.url(pg_db)
    a, _b, c = (_journal(url, name) for name in ("a", "b", "c"))
    assert a.live_instances(600) == ("a", "b", "c")
    _make_dead(postgres, pg_db, "b")
    assert c.live_instances(600) == ("a", "c")  # b's files go to the others (inbox/owners.py)
    c.leave()
    assert a.live_instances(600) == ("a",)
    assert _journal(url, None).live_instances(600) == ()  # a command's view: no instance
    postgres.stop()
    try:
        assert a.live_instances(600) == ()  # an outage: each looks at every file, as alone
    finally:
        postgres.start()


def test_a_path_the_database_cannot_index_is_refused_not_taken_for_an_outage(
    postgres: Postgres, pg_db: str
) -> None:
    """PostgreSQL's btree takes index rows up to ~2.7 KB; SQLite has no such limit. Such a file
    is refused on its own: no outage logged, no reconnecting, other claims go on."""
    journal = _long_connected(_journal(postgres.url(pg_db), "a"))
    parts = [secrets.token_hex(100) for _ in range(40)]  # random: compression cannot save it
    with pytest.raises(JournalRefused) as refused:
        _claim(journal, "/".join([*parts, "scan.pdf"]))
    assert parts[0][:20] not in str(refused.value)  # the server's text may quote it: not ours
    assert journal.link.up_for() > 3000  # not counted as the database going away
    _claim(journal, "p/ordinary")


def test_a_claim_re_registers_an_instance_that_was_taken_for_dead(
    postgres: Postgres, pg_db: str
) -> None:
    """Cut off past its lease, `a` is taken over and unregistered by `b`; back, its next claim
    must not be a row of nobody's, which `b` would take while `a` sends it."""
    url = postgres.url(pg_db)
    a, b = _journal(url, "a"), _long_connected(_journal(url, "b"))
    _claim(a, "p/old")
    _make_dead(postgres, pg_db, "a")
    assert [row.source for row in b.take_over(600)] == [PurePosixPath("p/old")]
    assert "a" not in b.live_instances(600)
    _claim(a, "p/new")  # back: it claims before its next heartbeat
    assert b.take_over(600) == []
    assert [row.source for row in a.held()] == [PurePosixPath("p/new")]


def test_a_claim_refreshes_an_instance_past_its_lease_before_a_survivor_looks(
    postgres: Postgres, pg_db: str
) -> None:
    """Stalled past its lease but not yet taken over: its claim counts as a heartbeat (the
    instance row is rewritten only when it is a second old, and this one is an hour old)."""
    url = postgres.url(pg_db)
    a, b = _journal(url, "a"), _long_connected(_journal(url, "b"))
    _make_dead(postgres, pg_db, "a")
    _claim(a, "p/new")
    assert "a" in b.live_instances(600)
    assert b.take_over(600) == []


def test_finished_rows_are_written_together_and_a_crash_first_leaves_them_to_file_again(
    postgres: Postgres, pg_db: str
) -> None:
    url = postgres.url(pg_db)
    a, view = _journal(url, "a"), _journal(url, None)
    ids = [_claim(a, f"p/{n}.pdf") for n in range(3)]
    for row_id in ids:
        a.update(row_id, state="uploaded", document_id=f"d{row_id}")
        a.finished(row_id, "done")
    # Written within FLUSH_EVERY, in one batch, as the rest of the fleet sees them.
    wait_for(lambda: {view.get(i).state for i in ids} == {"done"}, timeout=5)  # type: ignore[union-attr]

    crashed = _journal(url, "b")
    row_id = _claim(crashed, "p/late.pdf")
    crashed.update(row_id, state="uploaded", document_id="d-late")
    crashed._finished._write = lambda batch: None  # it dies before its batch is written
    crashed.finished(row_id, "done")
    crashed.link.close()
    again = _journal(url, "b")  # the restart: the row is filed again
    assert [row.id for row in again.held()] == [row_id]
    assert again.get(row_id).state == "uploaded"  # type: ignore[union-attr]


def test_each_statement_gets_its_own_row_count_when_threads_share_a_connection(
    postgres: Postgres, pg_db: str
) -> None:
    """A write to a row this instance no longer holds counts 0 rows: that is how a claim lost
    to a takeover is noticed, so the count must be the statement's own, whichever threads
    share the connection (the count of one statement must never be read after another began)."""
    link = Link(SharedJournal(postgres.url(pg_db)), connections=1)
    link.run("CREATE TABLE counted (id int PRIMARY KEY)", wait=True)
    link.run("INSERT INTO counted SELECT generate_series(1, 10)", wait=True)
    wrong: list[tuple[int, int]] = []

    def write(expected: int) -> None:
        for _ in range(1000):
            _, count = link.run("UPDATE counted SET id = id WHERE id <= %s", (expected,), wait=True)
            if count != expected:
                wrong.append((expected, count))

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1, 10, 0, 1, 10)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    link.close()
    assert wrong == []
