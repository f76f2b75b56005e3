import json
import stat
from pathlib import Path, PurePosixPath

import pytest

from ingestd.clock import utc_iso as utc_now
from ingestd.filing.receipts import Receipt, read_receipt, receipt_path, write_receipt
from ingestd.journal import Journal, Row


def test_receipt_is_written_whole_with_a_restrictive_mode(tmp_path: Path) -> None:
    path = receipt_path(tmp_path / "scan.pdf")
    assert path.name == "scan.pdf.receipt.json"
    write_receipt(path, {"status": "done", "file": "scan.pdf"})
    assert read_receipt(path) == {"status": "done", "file": "scan.pdf"}
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_same_receipt_again_is_fine_a_different_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.receipt.json"
    write_receipt(path, {"a": 1})
    write_receipt(path, {"a": 1})
    with pytest.raises(FileExistsError):
        write_receipt(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


def test_non_ascii_and_undecodable_names_survive(tmp_path: Path) -> None:
    path = tmp_path / "r.receipt.json"
    write_receipt(path, {"source": "p1/ärende.pdf"})
    assert read_receipt(path)["source"] == "p1/ärende.pdf"
    odd = tmp_path / "odd.receipt.json"
    write_receipt(odd, {"source": "p1/\udce4.pdf"})  # a Latin-1 byte in a name
    assert read_receipt(odd)["source"] == "p1/\udce4.pdf"


def test_timestamps_are_utc_with_z() -> None:
    assert utc_now().endswith("Z")


def _converted_row(tmp_path: Path, **values: object) -> Row:
    journal = Journal(tmp_path / "j.sqlite")
    row = journal.add(PurePosixPath("p_1/fax.tif"), PurePosixPath("w/1"), "2026-11-21T05:40:01Z")
    return journal.change(
        row, state="uploaded", size=1234, sha256="a" * 64, format="image/tiff",
        decision={"rule": "faxes", "rule_line": 3, "action": "upload", "title": "Fax",
                  "doc_type": "Scan", "target": "leyr", "convert": "pdf"},
        document_id="doc_1", **values,
    )  # fmt: skip


def test_a_converted_file_receipt_describes_what_was_sent_and_its_source(tmp_path: Path) -> None:
    row = _converted_row(
        tmp_path, converted_format="application/pdf", converted_sha256="b" * 64,
        converted_size=5678, converted_pages=3,
    )  # fmt: skip
    receipt = Receipt.of_row(row, "done", "fax.tif").to_dict()
    assert (receipt["format"], receipt["sha256"], receipt["size"]) == (
        "application/pdf", "b" * 64, 5678,
    )  # fmt: skip
    assert receipt["source_format"] == "image/tiff"
    assert receipt["source_sha256"] == "a" * 64
    assert receipt["source_size"] == 1234
    assert receipt["pages"] == 3
    keys = list(receipt)
    assert keys.index("format") + 1 == keys.index("source_format")  # beside what was sent
    assert Receipt.from_dict(receipt).to_dict() == receipt  # read back by `ingestd retry`


def test_a_file_sent_as_it_is_has_no_source_fields(tmp_path: Path) -> None:
    receipt = Receipt.of_row(_converted_row(tmp_path), "done", "fax.tif").to_dict()
    assert receipt["format"] == "image/tiff"
    assert not {"source_format", "source_sha256", "source_size", "pages"} & set(receipt)
