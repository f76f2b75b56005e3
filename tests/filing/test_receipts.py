import json
import stat
from pathlib import Path

import pytest

from ingestd.clock import utc_iso as utc_now
from ingestd.filing.receipts import read_receipt, receipt_path, write_receipt


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
