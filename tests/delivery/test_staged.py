"""The PDF a claimed file is sent as, in the state folder: made once and committed, reused
after a restart, made again byte-identical when lost or damaged, removed when finished."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from ingestd.delivery.decide import Rejected
from ingestd.delivery.staged import Stager
from ingestd.journal import Journal, Row
from ingestd.observe.logs import Masker
from ingestd.observe.metrics import Metrics
from tests import images


@pytest.fixture
def stager(tmp_path: Path) -> Stager:
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    return Stager(lambda: tmp_path / "state", journal, Masker(b"k" * 32), Metrics())


def _row(stager: Stager, name: str = "fax.tif") -> Row:
    return stager.journal.add(PurePosixPath(f"p_1/{name}"), PurePosixPath(f"w/{name}"), "t")


def _prepare(stager: Stager, row: Row, data: bytes, tmp_path: Path) -> tuple[Row, str, bytes]:
    src = tmp_path / "src.tif"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        row, pdf = stager.prepare(row, fd, len(data), "image/tiff")
        try:
            return row, pdf.sha256, os.pread(pdf.fd, pdf.size + 1, 0)
        finally:
            os.close(pdf.fd)
    finally:
        os.close(fd)


def _conversions(stager: Stager) -> float:
    value = stager.metrics.registry.get_sample_value(
        "ingestd_conversions_total", {"outcome": "done"}
    )
    return value or 0.0


def test_made_once_committed_then_reused(stager: Stager, tmp_path: Path) -> None:
    fax = images.fax_tiff(pages=2)
    row, sha256, pdf = _prepare(stager, _row(stager), fax, tmp_path)
    kept = stager.journal.get(row.id)
    assert kept is not None
    assert (kept.converted_format, kept.converted_pages) == ("application/pdf", 2)
    assert kept.converted_sha256 == sha256 == hashlib.sha256(pdf).hexdigest()
    assert kept.converted_size == len(pdf)
    path = stager.path(row)
    assert path.read_bytes() == pdf
    assert path.stat().st_mode & 0o777 == 0o600
    assert tmp_path / "state" / "converted" == path.parent
    # After a restart (the row as the journal holds it): the kept PDF, not a new conversion.
    _, again, same = _prepare(stager, kept, fax, tmp_path)
    assert (again, same) == (sha256, pdf)
    assert _conversions(stager) == 1


@pytest.mark.parametrize("damage", ["lost", "changed"])
def test_a_lost_or_changed_pdf_is_made_again_byte_identical(
    stager: Stager, tmp_path: Path, damage: str
) -> None:
    fax = images.fax_tiff(pages=2)
    row, sha256, pdf = _prepare(stager, _row(stager), fax, tmp_path)
    if damage == "lost":
        stager.path(row).unlink()
    else:
        stager.path(row).write_bytes(pdf[:-10] + b"0123456789")
    _, again, same = _prepare(stager, row, fax, tmp_path)
    assert (again, same) == (sha256, pdf)
    assert _conversions(stager) == 2


def test_a_damaged_source_is_rejected_and_leaves_nothing(stager: Stager, tmp_path: Path) -> None:
    fax = images.fax_tiff(pages=2)
    row = _row(stager)
    with pytest.raises(Rejected) as caught:
        _prepare(stager, row, fax[:3000], tmp_path)
    assert caught.value.kind == "conversion_failed"
    assert list((tmp_path / "state" / "converted").iterdir()) == []
    kept = stager.journal.get(row.id)
    assert kept is not None
    assert kept.converted_sha256 is None


def test_remove_and_sweep(stager: Stager, tmp_path: Path) -> None:
    fax = images.fax_tiff(pages=1)
    finished, _, _ = _prepare(stager, _row(stager, "a.tif"), fax, tmp_path)
    active, _, _ = _prepare(stager, _row(stager, "b.tif"), fax, tmp_path)
    stager.journal.update(finished.id, state="done")
    (tmp_path / "state" / "converted" / "999.pdf").write_bytes(b"an orphan")
    stager.sweep()  # at start-up: PDFs of rows that are finished or gone
    assert sorted(p.name for p in (tmp_path / "state" / "converted").iterdir()) == [
        f"{active.id}.pdf"
    ]
    stager.remove(active)
    assert list((tmp_path / "state" / "converted").iterdir()) == []
