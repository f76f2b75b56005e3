"""Reading a document safely: open without following links, check the descriptor, hash, detect type.

Everything about a file (its type, hash, and the bytes that are uploaded) comes from ONE
descriptor opened with O_NOFOLLOW | O_NONBLOCK, so a symlink swapped in, or a FIFO, can never
make ingestd read something else or block.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import lzma
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import filetype

from ingestd.unreachable import is_unavailable

HEAD_BYTES = 8192
CHUNK = 1 << 20
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
DICOM = "application/dicom"
PDF = "application/pdf"
ZIP = "application/zip"
# DICOM PS3.10 7.1: a 128-byte preamble, free for other formats' headers (often TIFF's), then DICM.
DICOM_MAGIC = (128, b"DICM")
# PDF readers accept "%PDF-" anywhere in the first 1024 bytes (ISO 32000-1 Annex H, note 13).
PDF_MAGIC = b"%PDF-"
PDF_WINDOW = 1024
# The main part of a Word document, as [Content_Types].xml declares it (ECMA-376 Part 1, 11.3.10);
# a macro-enabled document or a template declares another type and is not DOCX.
DOCX_MAIN_PART = DOCX + ".main+xml"
CONTENT_TYPES_MAX = 1 << 20
_DOCX_MAIN_TYPE = re.compile(
    rb"""ContentType\s*=\s*["']\s*""" + re.escape(DOCX_MAIN_PART.encode()) + rb"""\s*["']""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Snapshot:
    """What must not change while a file settles or is read."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    uid: int  # who dropped it (the receipt's dropped_by)

    @classmethod
    def of(cls, st: os.stat_result) -> Snapshot:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_uid)


class UnsafeFile(Exception):
    """The path cannot be read as a document: `kind` is a receipt error kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def file_type(mode: int) -> str:
    """A human name for what a non-regular path is."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open a regular file for reading; never follows a link, never blocks on a FIFO.

    Raises FileNotFoundError when it is gone and UnsafeFile when it must not be read.
    """
    # lstat first: opening a device can have side effects (a tape rewinds) even non-blocking.
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeFile(
            "not_a_regular_file", f"is {file_type(mode)}; only regular files are uploaded"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise UnsafeFile(
                "not_a_regular_file", "is a symbolic link; links are never followed"
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UnsafeFile(
                "unreadable",
                "permission denied: give the ingestd user read access (group or ACL), "
                "then use `ingestd retry`",
            ) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(exc.errno, exc.strerror) from exc
        if is_unavailable(exc):
            raise  # the share is gone, not the file: the caller waits for it
        raise UnsafeFile("unreadable", f"cannot open: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile(
            "not_a_regular_file", f"is {file_type(st.st_mode)}; only regular files are uploaded"
        )
    return fd, st


def sha256_of(fd: int) -> tuple[str, int]:
    """SHA-256 and length of the whole file behind `fd`, read with pread (offset untouched)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return digest.hexdigest(), offset
        digest.update(chunk)
        offset += len(chunk)


class StreamedDigest:
    """SHA-256 of a file taken from the reads that upload it, so each byte is read once.

    Reads are fed with their offsets; a read behind what is already hashed (a retry sending
    the file again) adds nothing, so any number of sends hash the file once. `hexdigest`
    reads whatever no send has read (none yet, or one cut short) and is then fixed.
    """

    def __init__(self, fd: int, known: str | None = None) -> None:
        self._fd = fd
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes from offset 0 that are in _hash
        self._known = known

    def read_at(self, offset: int, length: int) -> bytes:
        chunk = os.pread(self._fd, length, offset)
        self._feed(offset, chunk)
        return chunk

    def _feed(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if self._known is None and offset <= self._hashed < end:
            self._hash.update(memoryview(chunk)[self._hashed - offset :])
            self._hashed = end

    def hexdigest(self) -> str:
        if self._known is None:
            while chunk := os.pread(self._fd, CHUNK, self._hashed):
                self._feed(self._hashed, chunk)
            self._known = self._hash.hexdigest()
        return self._known

    @property
    def hashed(self) -> int:
        """How many bytes the digest covers (the file's length once `hexdigest` ran)."""
        return self._hashed


def detect_format(fd: int) -> str:
    """The MIME type from content, or "" when not recognised.

    In this order: DICM at byte 128 is DICOM whatever the preamble holds; a signature at the
    start (filetype's) next; a zip is DOCX only when its [Content_Types].xml declares a Word
    document's main part; "%PDF-" starting in the first 1024 bytes is PDF (readers accept bytes
    before it); UTF-8 without NULs is text/plain.
    """
    head = os.pread(fd, HEAD_BYTES, 0)
    if not head:
        return ""
    offset, magic = DICOM_MAGIC
    if head[offset : offset + len(magic)] == magic:
        return DICOM
    mime = filetype.guess_mime(head) or ""
    if mime in (ZIP, DOCX) or head.startswith(b"PK\x03\x04"):
        if _is_docx(fd):
            return DOCX
        return ZIP if mime in ("", DOCX) else mime
    if mime:
        return mime
    if head.find(PDF_MAGIC, 0, PDF_WINDOW + len(PDF_MAGIC) - 1) >= 0:
        return PDF
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut at the end of the head is still text.
            if exc.start < len(head) - 3:
                return ""
        return "text/plain"
    return ""


def _is_docx(fd: int) -> bool:
    try:
        with os.fdopen(os.dup(fd), "rb") as handle, zipfile.ZipFile(handle) as archive:
            info = archive.getinfo("[Content_Types].xml")
            if info.file_size > CONTENT_TYPES_MAX:
                return False
            types = archive.read(info)
    # Untrusted input: a damaged member raises the decompressor's own error (zlib, lzma) and an
    # unknown compression method NotImplementedError; each only means "not a Word document".
    except (
        KeyError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
    ):
        return False
    return _declares_word_document(types)


def _declares_word_document(types: bytes) -> bool:
    """Whether [Content_Types].xml gives some part the Word document's main content type.

    A pattern, not an XML parser: this is untrusted input, and the attribute is all we need.
    """
    return _DOCX_MAIN_TYPE.search(types) is not None


def writer_active(path: Path) -> bool | None:
    """Whether some process holds the file open for writing (Linux read-lease probe).

    A read lease can only be taken when nobody has the file open for writing. Returns None
    when the probe is not possible (not the owner and no CAP_LEASE, or a file system without
    leases): the caller then relies on the settle time alone.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return True
        return None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)
