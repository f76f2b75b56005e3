"""Filing against real folders: finishing again after a crash (a row recorded `uploaded` whose
file and receipt were already put in done/, the crash before `done` was recorded) moves nothing,
even on another host that names the file's owner differently; and files of one name finishing
at once are each given a name of their own."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from ingestd.filing import moves
from ingestd.filing.filer import Filer
from ingestd.filing.receipts import Receipt, read_receipt, receipt_path, render, write_receipt
from ingestd.journal import Journal, Row
from ingestd.observe.logs import Masker


def _uploaded(journal: Journal, inbox: Path, n: int, data: bytes, source: str = "p/fax.pdf") -> Row:
    """Instance n's row of an uploaded file (document `doc-n`), its work file written."""
    work = PurePosixPath(f".ingestd/work/i{n}/c-fax.pdf")
    (inbox / work).parent.mkdir(parents=True, exist_ok=True)
    (inbox / work).write_bytes(data)
    row = journal.add(PurePosixPath(source), work, "2026-01-01T00:00:00Z")
    sha256 = hashlib.sha256(data).hexdigest()
    values = {"document_id": f"doc-{n}", "sha256": sha256, "size": len(data)}
    return journal.change(row, state="uploaded", decision={"target": "leyr"}, **values)


def _filed_before_a_crash(tmp_path: Path, dropped_by: str | None) -> tuple[Filer, Journal, Row]:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    for folder in (inbox, done / "p", failed):
        folder.mkdir(parents=True)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    work = PurePosixPath(".ingestd/work/i1/c-a.pdf")
    row = journal.add(PurePosixPath("p/a.pdf"), work, "2026-01-01T00:00:00Z")
    row = journal.change(
        row,
        state="uploaded",
        document_id="doc-1",
        sha256="ab" * 32,
        size=3,
        format="application/pdf",
        decision={"target": "leyr", "title": "Scan"},
        dest=PurePosixPath("p/a.pdf"),
        finished_at="2026-01-01T00:00:01Z",
        owner_uid=0,
    )
    (done / "p" / "a.pdf").write_bytes(b"pdf")  # moved there; the work file is gone
    receipt = Receipt.of_row(row, "done", "a.pdf").to_dict()
    if dropped_by is not None:
        receipt["dropped_by"] = dropped_by  # as another host's user database names uid 0
    receipt_path(done / "p" / "a.pdf").write_bytes(render(receipt))
    filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    return filer, journal, row


def test_a_receipt_this_filing_wrote_is_kept_and_nothing_moves(tmp_path: Path) -> None:
    filer, journal, row = _filed_before_a_crash(tmp_path, dropped_by="someone-else")
    assert filer.finish(row) == "done"
    folder = tmp_path / "done" / "p"
    assert sorted(p.name for p in folder.iterdir()) == [
        "a.pdf",
        receipt_path(folder / "a.pdf").name,
    ]
    assert read_receipt(receipt_path(folder / "a.pdf"))["document_id"] == "doc-1"
    stored = journal.get(row.id)
    assert stored is not None
    assert stored.state == "done"
    assert stored.dest == PurePosixPath("p/a.pdf")


def test_the_same_host_finishing_again_writes_nothing_new(tmp_path: Path) -> None:
    filer, _, row = _filed_before_a_crash(tmp_path, dropped_by=None)
    assert filer.finish(row) == "done"
    assert len(list((tmp_path / "done" / "p").iterdir())) == 2


def test_two_files_of_one_name_finishing_together_get_a_name_each(tmp_path: Path) -> None:
    """A fax sent twice with the same name during an EHR outage: two rows, one inbox name,
    identical bytes, both finishing when the EHR answers again. Each is filed under a name of
    its own beside its own receipt (both names were chosen before either file was moved)."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    rows = []
    for n in (1, 2):
        work = PurePosixPath(f".ingestd/work/i1/c{n}-fax.pdf")
        (inbox / work).parent.mkdir(parents=True, exist_ok=True)
        (inbox / work).write_bytes(b"the same fax")
        row = journal.add(PurePosixPath("p/fax.pdf"), work, "2026-01-01T00:00:00Z")
        sha256 = hashlib.sha256(b"the same fax").hexdigest()
        values = {"state": "uploaded", "document_id": f"doc-{n}", "sha256": sha256, "size": 12}
        rows.append(journal.change(row, **values, decision={"target": "leyr"}))
    rows = [journal.change(row, **filer.destination(row, "done")) for row in rows]
    # The first has been moved into place and its receipt is not yet written when the second
    # is filed (two workers at once), so the second finds a file with its very bytes there.
    first = rows[0]
    assert first.dest is not None
    (done / first.dest).parent.mkdir(parents=True, exist_ok=True)
    (inbox / first.work).rename(done / first.dest)
    assert filer.finish(rows[1]) == "done"
    assert filer.finish(first) == "done"
    receipts = {
        path.name: read_receipt(path) for path in (done / "p").iterdir() if path.suffix == ".json"
    }
    assert sorted(r["document_id"] for r in receipts.values()) == ["doc-1", "doc-2"]
    for receipt in receipts.values():
        assert (done / "p" / receipt["file"]).read_bytes() == b"the same fax"
    assert len(list((done / "p").iterdir())) == 4


def test_a_failed_file_put_back_before_its_end_was_recorded_gets_no_receipt_again(
    tmp_path: Path,
) -> None:
    """Filed in failed/ with its receipt, the end not yet recorded (a crash, or a shared
    journal's batch not yet written), then `ingestd retry` put it back: filing the row again
    must not write a receipt beside nothing."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    work = PurePosixPath(".ingestd/work/i1/c-a.gif")
    row = journal.add(PurePosixPath("p/a.gif"), work, "2026-01-01T00:00:00Z")
    row = journal.change(row, state="rejected", error={"kind": "unsupported_type"}, size=3)
    row = journal.change(row, **filer.destination(row, "failed"))
    (inbox / work).parent.mkdir(parents=True)
    (inbox / work).write_bytes(b"gif")
    assert filer.finish(row) == "failed"
    assert row.dest is not None
    filed = failed / row.dest
    filed.rename(inbox / "p-a.gif")  # put back, as retry does: file moved, receipt removed
    receipt_path(filed).unlink()
    assert filer.finish(row) == "failed"  # filed again: the end is recorded, nothing written
    assert list((failed / "p").iterdir()) == []


def test_a_name_recorded_before_a_restart_is_not_given_to_a_new_row(tmp_path: Path) -> None:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    before = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    old = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/1"), "2026-01-01T00:00:00Z")
    old = journal.change(old, state="uploaded", **before.destination(old, "done"))
    # The restart: a new filer, the recorded row held before a new one chooses its name.
    after = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    after.hold_recorded(journal.held())
    new = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/2"), "2026-01-01T00:00:01Z")
    assert after.destination(new, "done")["dest"] != old.dest


@pytest.mark.parametrize(
    ("second_source", "name"),
    [("p/fax.pdf", "fax.pdf"), ("p/fax (1).pdf", "fax (1).pdf")],
    ids=["same-source", "retried-source"],
)
def test_two_instances_choosing_one_name_at_once_file_under_a_name_each(
    tmp_path: Path, second_source: str, name: str
) -> None:
    """Two instances of a fleet (a filer each, one journal), the same fax twice: neither knows
    the other's chosen name, so both choose one. The first moves its file in; before its
    receipt is written the second finds a file with its very bytes at its name, and must not
    take it for an interrupted move of its own (it would delete its own file, and one file
    would stand for two documents). The second may come from another inbox name: `ingestd
    retry` put it back as `fax (1).pdf` while a `fax.pdf` was filed, so both choose
    `fax (1).pdf`."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    (done / "p").mkdir(parents=True)
    if name != "fax.pdf":
        (done / "p" / "fax.pdf").write_bytes(b"filed long ago")
        write_receipt(receipt_path(done / "p" / "fax.pdf"), {"status": "done"})
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    filers = [
        Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32)) for _ in "ab"
    ]
    rows = []
    for n, filer in enumerate(filers, 1):
        source = "p/fax.pdf" if n == 1 else second_source
        row = _uploaded(journal, inbox, n, b"the same fax", source)
        rows.append(journal.change(row, **filer.destination(row, "done")))
    first, second = rows
    assert first.dest == second.dest == PurePosixPath("p") / name
    (inbox / first.work).rename(done / "p" / name)  # the first's move, receipt not yet
    assert filers[1].finish(second) == "done"
    assert filers[0].finish(first) == "done"
    receipts = [read_receipt(path) for path in (done / "p").iterdir() if path.suffix == ".json"]
    ours = [r for r in receipts if r.get("document_id")]
    assert sorted(r["document_id"] for r in ours) == ["doc-1", "doc-2"]
    assert len({r["file"] for r in ours}) == 2
    for receipt in ours:
        assert (done / "p" / receipt["file"]).read_bytes() == b"the same fax"
    assert len(list((done / "p").iterdir())) == 2 * len(receipts)
    assert [journal.get(row.id).state for row in rows] == ["done", "done"]  # type: ignore[union-attr]


def test_a_row_taken_over_lets_go_of_its_name(tmp_path: Path) -> None:
    """A row this instance lost to a survivor (ClaimLost) no longer keeps its chosen name from
    this instance's next file of that name."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    lost = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/1"), "2026-01-01T00:00:00Z")
    kept = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/2"), "2026-01-01T00:00:01Z")
    assert filer.destination(lost, "done")["dest"] == PurePosixPath("p/fax.pdf")
    assert filer.destination(kept, "done")["dest"] == PurePosixPath("p/fax (1).pdf")
    filer.forget(lost.id)
    new = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/3"), "2026-01-01T00:00:02Z")
    assert filer.destination(new, "done")["dest"] == PurePosixPath("p/fax.pdf")
    third = journal.add(PurePosixPath("p/fax.pdf"), PurePosixPath("w/4"), "2026-01-01T00:00:03Z")
    assert filer.destination(third, "done")["dest"] == PurePosixPath("p/fax (2).pdf")


def _another_receipt_at_our_name(tmp_path: Path) -> tuple[Filer, Journal, Row, Path]:
    """Our file moved into done/p/a.pdf, then (before our receipt) a receipt of something else
    put beside it by hand."""
    filer, journal, row = _filed_before_a_crash(tmp_path, dropped_by=None)
    folder = tmp_path / "done" / "p"
    foreign = {"status": "done", "document_id": "someone-else", "file": "a.pdf"}
    receipt_path(folder / "a.pdf").write_bytes(render(foreign))
    return filer, journal, row, folder


def test_a_file_beside_another_receipt_moves_aside_with_its_own(tmp_path: Path) -> None:
    filer, journal, row, folder = _another_receipt_at_our_name(tmp_path)
    assert filer.finish(row) == "done"
    assert read_receipt(receipt_path(folder / "a.pdf"))["document_id"] == "someone-else"
    ours = read_receipt(receipt_path(folder / "a (1).pdf"))
    assert (ours["document_id"], ours["file"]) == ("doc-1", "a (1).pdf")
    assert (folder / "a (1).pdf").read_bytes() == b"pdf"
    assert not (folder / "a.pdf").exists()
    stored = journal.get(row.id)
    assert stored is not None
    assert stored.dest == PurePosixPath("p/a (1).pdf")


class Killed(Exception):
    """The process dies here."""


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_crash_while_moving_aside_leaves_no_file_without_its_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """Killed as the new name is recorded: finishing again after the restart still writes our
    receipt beside our file (at worst the file has a second name), never ends the row with
    its file moved away from its recorded name and no receipt anywhere."""
    filer, journal, row, folder = _another_receipt_at_our_name(tmp_path)
    if not links:  # a share like smbnetfs: the new name is a copy
        monkeypatch.setattr(os, "link", _refused)
    change = journal.change

    def killed_when_recording_a_new_name(row: Row, **values: object) -> Row:
        if row.dest is not None and values.get("dest") is not None:
            raise Killed
        return change(row, **values)

    monkeypatch.setattr(journal, "change", killed_when_recording_a_new_name)
    with pytest.raises(Killed):
        filer.finish(row)
    assert sorted(p.name for p in folder.iterdir()) == ["a.pdf", "a.pdf.receipt.json"]
    monkeypatch.setattr(journal, "change", change)
    after = Filer(lambda: tmp_path / "inbox", lambda: (tmp_path / "done", tmp_path / "failed"),
                  journal, Masker(b"k" * 32))  # fmt: skip
    assert after.finish(row) == "done"
    stored = journal.get(row.id)
    assert stored is not None
    assert stored.dest is not None
    filed = tmp_path / "done" / stored.dest
    assert filed.read_bytes() == b"pdf"
    assert read_receipt(receipt_path(filed))["document_id"] == "doc-1"
    assert read_receipt(receipt_path(folder / "a.pdf"))["document_id"] == "someone-else"
    receipts = [p for p in folder.iterdir() if p.suffix == ".json"]
    assert len(receipts) == 2  # the other one and ours: none beside nothing


def _refused(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


def test_a_copy_another_instance_is_still_making_at_our_name_is_never_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet on a share without hard links, the same fax twice, one name chosen by both: the
    first instance is still copying its file into place when the second tries the name. The
    part-made copy is a prefix of the second's own bytes, which a crash of its own would also
    leave; it is the first's, though (its row records the name), and is left alone."""
    monkeypatch.setattr(os, "link", _refused)
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    filers = [
        Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32)) for _ in "ab"
    ]
    fax = b"the same fax, page after page" * 1000
    rows = []
    for n, filer in enumerate(filers, 1):
        row = _uploaded(journal, inbox, n, fax)
        rows.append(journal.change(row, **filer.destination(row, "done")))
    first, second = rows
    (done / "p").mkdir(parents=True)
    (done / "p" / "fax.pdf").write_bytes(fax[:4096])  # the first's copy, part-way
    assert filers[1].finish(second) == "done"
    assert (done / "p" / "fax.pdf").read_bytes() == fax[:4096]  # untouched
    assert read_receipt(receipt_path(done / "p" / "fax (1).pdf"))["document_id"] == "doc-2"
    (done / "p" / "fax.pdf").write_bytes(fax)  # the first's copy completes,
    (inbox / first.work).unlink()  # and its work file goes
    assert filers[0].finish(first) == "done"
    assert read_receipt(receipt_path(done / "p" / "fax.pdf"))["document_id"] == "doc-1"
    assert len(list((done / "p").iterdir())) == 4


def test_a_whole_copy_of_ours_at_a_name_another_row_also_chose_is_taken_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share without hard links; two instances chose one name for files of different bytes.
    The first copied its file there and was killed before removing its work file. Restarted,
    it finds a whole copy of its own bytes at its name — not the other's (whose bytes differ):
    it is filed there, and no copy without a receipt is left behind."""
    monkeypatch.setattr(os, "link", _refused)
    monkeypatch.setattr(moves, "_renameat2", None)
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    rows = []
    for n, data in enumerate((b"first fax", b"second fax, other bytes"), 1):
        row = _uploaded(journal, inbox, n, data)
        rows.append(journal.change(row, dest=PurePosixPath("p/fax.pdf")))
    first, second = rows
    (done / "p").mkdir(parents=True)
    (done / "p" / "fax.pdf").write_bytes(b"first fax")  # copied, then the kill
    for row in (first, second):  # each instance, the first restarted
        filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
        assert filer.finish(row) == "done"
    assert not (inbox / first.work).exists()
    filed = {
        r["file"]: r["document_id"]
        for r in (read_receipt(p) for p in (done / "p").iterdir() if p.suffix == ".json")
    }
    assert filed == {"fax.pdf": "doc-1", "fax (1).pdf": "doc-2"}
    assert (done / "p" / "fax (1).pdf").read_bytes() == b"second fax, other bytes"
    assert len(list((done / "p").iterdir())) == 4  # no copy without its receipt


def test_a_row_without_a_hash_never_takes_another_rows_file_for_its_own(tmp_path: Path) -> None:
    """A rejected file may have no SHA-256 (refused before it was read): with nothing to tell
    its bytes from another row's, a file at its name that another row chose is the other's."""
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    rows = []
    for n, sha256 in enumerate((hashlib.sha256(b"same").hexdigest(), None), 1):
        work = PurePosixPath(f".ingestd/work/i{n}/c-x.gif")
        (inbox / work).parent.mkdir(parents=True, exist_ok=True)
        (inbox / work).write_bytes(b"same")
        row = journal.add(PurePosixPath("p/x.gif"), work, "2026-01-01T00:00:00Z")
        error = {"kind": "unsupported_type", "message": "x"}
        row = journal.change(row, state="rejected", error=error, sha256=sha256, size=4)
        rows.append(journal.change(row, dest=PurePosixPath("p/x.gif")))
    first, second = rows
    (failed / "p").mkdir(parents=True)
    (inbox / first.work).rename(failed / "p" / "x.gif")  # the first's move, receipt not yet
    filer = Filer(lambda: inbox, lambda: (done, failed), journal, Masker(b"k" * 32))
    assert filer.finish(second) == "failed"
    assert filer.finish(first) == "failed"
    names = sorted(p.name for p in (failed / "p").iterdir())
    assert names == ["x (1).gif", "x (1).gif.receipt.json", "x.gif", "x.gif.receipt.json"]
