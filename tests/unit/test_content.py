"""Safe reading and content-based type detection on real files."""

import io
import os
import socket
import zipfile
from pathlib import Path

import pytest

from ingestd import content
from tests.samples import SAMPLES


def _detect(path: Path) -> str:
    fd, _ = content.open_regular(path)
    try:
        return content.detect_format(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mime", sorted(SAMPLES))
def test_detects_each_sample_type_from_content(tmp_path: Path, mime: str) -> None:
    path = tmp_path / "no-extension"
    path.write_bytes(SAMPLES[mime]())
    assert _detect(path) == mime


def test_a_png_named_pdf_is_png(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(SAMPLES["image/png"]())
    assert _detect(path) == "image/png"


def test_a_plain_zip_is_not_docx(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", "a,b")
    path = tmp_path / "x.docx"
    path.write_bytes(buffer.getvalue())
    assert _detect(path) == "application/zip"


def test_zeros_are_not_recognised(tmp_path: Path) -> None:
    path = tmp_path / "prealloc.pdf"
    path.write_bytes(b"\0" * 4096)
    assert _detect(path) == ""


def test_symlink_fifo_and_socket_are_refused_without_blocking(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("x")
    (tmp_path / "link.pdf").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.pdf")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.pdf"))
    try:
        for name in ("link.pdf", "fifo.pdf", "sock.pdf"):
            with pytest.raises(content.UnsafeFile) as caught:
                content.open_regular(tmp_path / name)
            assert caught.value.kind == "not_a_regular_file"
    finally:
        sock.close()


def test_hash_and_length(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    fd, _ = content.open_regular(path)
    try:
        digest, size = content.sha256_of(fd)
    finally:
        os.close(fd)
    import hashlib

    assert digest == hashlib.sha256(b"abc" * 1000).hexdigest() and size == 3000


def test_writer_probe_sees_an_open_writer(tmp_path: Path) -> None:
    path = tmp_path / "w.pdf"
    with path.open("wb") as handle:
        handle.write(b"%PDF-1.4")
        handle.flush()
        assert content.writer_active(path) is True
    assert content.writer_active(path) is False
