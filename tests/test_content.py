"""Safe reading and content-based type detection on real files."""

import hashlib
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
    assert digest == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert size == 3000


def _chunks(digest: content.StreamedDigest, size: int, step: int, stop: int | None = None) -> None:
    """Read like a request body does: from offset 0, `step` bytes at a time."""
    for offset in range(0, size if stop is None else stop, step):
        digest.read_at(offset, step)


def test_streamed_digest_reads_each_byte_once_across_resends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300_001)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    read = 0
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        chunk = real_pread(fd, n, offset)
        read += len(chunk)
        return chunk

    monkeypatch.setattr(os, "pread", counting_pread)
    try:
        digest = content.StreamedDigest(fd)
        _chunks(digest, len(data), 65536, stop=131072)  # a send cut short after 128 KiB
        _chunks(digest, len(data), 49152)  # the resend, in other chunks, all the way
        sent = read
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        assert read == sent  # the sends read it all: hexdigest read nothing more
        assert digest.hashed == len(data)
    finally:
        os.close(fd)


def test_streamed_digest_reads_what_no_send_read(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        cut = content.StreamedDigest(fd)
        _chunks(cut, len(data), 65536, stop=65536)  # the connection dropped mid-body
        assert cut.hexdigest() == hashlib.sha256(data).hexdigest()
        assert content.StreamedDigest(fd).hexdigest() == hashlib.sha256(data).hexdigest()
        assert content.StreamedDigest(fd, known="ab" * 32).hexdigest() == "ab" * 32
    finally:
        os.close(fd)


def test_writer_probe_sees_an_open_writer(tmp_path: Path) -> None:
    path = tmp_path / "w.pdf"
    with path.open("wb") as handle:
        handle.write(b"%PDF-1.4")
        handle.flush()
        assert content.writer_active(path) is True
    assert content.writer_active(path) is False
