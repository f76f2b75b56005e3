"""Filing again after a crash: a row recorded `uploaded` whose file and receipt were already put
in done/ (the crash came before `done` was recorded) is finished without moving anything, even
when the instance finishing it is another host that names the file's owner differently."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ingestd.filing.filer import Filer
from ingestd.filing.receipts import Receipt, read_receipt, receipt_path, render
from ingestd.journal import Journal, Row
from ingestd.observe.logs import Masker


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
