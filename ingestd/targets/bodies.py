"""Streaming request bodies with an exact length, read from the upload's descriptor.

Each EHR's module owns its body (Leyr's JSON with base64 content, Nymbl's multipart/form-data);
what they share is here: `StreamingBody`, a plain iterable of chunks with `__len__` (see it for
why), and reading the file. Bytes are read with
`upload.read_at` (os.pread) in chunks of about 64 KiB, so memory does not grow with the file and
a new body built for each attempt starts again from offset 0. A body is used up by one send.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from ingestd.targets.base import Upload

CHUNK = 64 * 1024


class SourceChanged(Exception):
    """The file ended before `upload.size` bytes: it changed while it was being sent.

    Deliberately not an OSError: urllib3 would take an OSError for a network failure.
    """


class SourceUnreadable(Exception):
    """os.pread failed on the upload's descriptor."""

    def __init__(self, err: int | None) -> None:
        self.errno_name = errno.errorcode.get(err or 0, "unknown error")
        super().__init__(f"the file could not be read ({self.errno_name})")


def read_exact(upload: Upload, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < length:
        try:
            chunk = upload.read_at(offset + got, length - got)
        except OSError as exc:
            raise SourceUnreadable(exc.errno) from None
        if not chunk:
            raise SourceChanged("the file is shorter than when it was taken")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def file_chunks(upload: Upload, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """The first `upload.size` bytes of the file, `chunk_size` at a time (the last may be short)."""
    offset = 0
    while offset < upload.size:
        n = min(chunk_size, upload.size - offset)
        yield read_exact(upload, offset, n)
        offset += n


class StreamingBody:
    """A one-shot body: an iterable of chunks with an exact length, sent as they are made.

    Deliberately not file-like: given `read`, urllib3 and http.client pull 8–16 KiB at a time,
    a Python call and a wait for the GIL per block; given an iterable, they send each chunk
    (about 64 KiB) with one sendall. Not an io.IOBase either: requests' super_len would see a
    length of 0 and switch to chunked encoding.
    """

    content_type = "application/octet-stream"

    def __init__(self, length: int, chunks: Iterator[bytes]) -> None:
        self._length = length
        self._chunks = chunks

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks
