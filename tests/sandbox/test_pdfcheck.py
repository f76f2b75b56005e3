"""The sandbox's look inside a stored PDF: a PDF made from a fax opens with its pages; a
truncated one does not open."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ingestd.delivery.topdf import convert
from ingestd.sandbox.pdfcheck import pdf_pages
from tests import images

pytest.importorskip(
    "pypdf", minversion="4", reason="pypdf (a test extra) is what the sandbox opens PDFs with"
)


def _pdf(tmp_path: Path, pages: int) -> bytes:
    src = tmp_path / "fax.tif"
    src.write_bytes(images.fax_tiff(pages=pages))
    fd = os.open(src, os.O_RDONLY)
    try:
        out = io.BytesIO()
        convert(fd, src.stat().st_size, out)
    finally:
        os.close(fd)
    return out.getvalue()


def test_a_converted_fax_opens_with_its_pages(tmp_path: Path) -> None:
    assert pdf_pages(_pdf(tmp_path, 3)) == 3


def test_a_truncated_pdf_does_not_open(tmp_path: Path) -> None:
    pdf = _pdf(tmp_path, 2)
    assert pdf_pages(pdf[: len(pdf) // 3]) == 0
    assert pdf_pages(b"not a pdf") == 0
