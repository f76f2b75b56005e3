"""Streaming request bodies with an exact length, read from the upload's descriptor.

Owns `LeyrJsonBody` (JSON with the file as base64) and `MultipartBody` (multipart/form-data).
Both are plain iterables of chunks with `__len__` (see StreamingBody for why). Bytes are read with
`upload.read_at` (os.pread) in chunks of about 64 KiB, so memory does not grow with the file and
a new body built for each attempt starts again from offset 0. A body is used up by one send.
"""

from __future__ import annotations

import base64
import errno
import json
import secrets
from collections.abc import Iterator, Sequence
from urllib.parse import quote

from ingestd.targets.base import Upload

CHUNK = 64 * 1024
# A multiple of 3, so every chunk but the last encodes to base64 without padding: 64 KiB out.
B64_RAW_CHUNK = 48 * 1024


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


class LeyrJsonBody(StreamingBody):
    """`{"content": "<base64>", "format", "title", "type", "created_by_id"?}` for Leyr."""

    content_type = "application/json"

    def __init__(self, upload: Upload, created_by_id: str | None = None) -> None:
        meta = {"format": upload.mime, "title": upload.title, "type": upload.doc_type}
        if created_by_id:
            meta["created_by_id"] = created_by_id
        prefix = b'{"content": "'
        # json.dumps of the other fields, minus its "{", appended after the content string.
        suffix = b'", ' + json.dumps(meta).encode("ascii")[1:]
        encoded = 4 * ((upload.size + 2) // 3)
        super().__init__(len(prefix) + encoded + len(suffix), self._gen(upload, prefix, suffix))

    @staticmethod
    def _gen(upload: Upload, prefix: bytes, suffix: bytes) -> Iterator[bytes]:
        yield prefix
        for chunk in file_chunks(upload, B64_RAW_CHUNK):
            yield base64.b64encode(chunk)
        yield suffix


def quote_form_name(value: str) -> str:
    """A multipart field name as HTML5 forms send it: raw UTF-8, three characters escaped.
    Only for our own ASCII field names; a file name goes through `filename_params`."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# Printable ASCII that every parser reads back from a quoted `filename` as it was sent.
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - set('"\\%')


def _quoted_filename(name: str) -> str:
    """The inside of `filename="…"`: `\\` and `"` escaped as RFC 9110 quoted-string pairs
    (Werkzeug, python-multipart and busboy all undo them; the `%22` browsers write for `"` is
    undone by Werkzeug alone), control characters as `%XX` (a raw CR or LF would end the header;
    browsers write those two the same way), everything else raw UTF-8."""
    out: list[str] = []
    for char in name:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"%{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def filename_params(name: str) -> str:
    """The Content-Disposition parameters naming the file: `filename="…"`, and, when the name
    holds anything but plain printable ASCII, `filename*=UTF-8''…` (RFC 8187) after it.

    RFC 7578 4.2 says not to send `filename*`, and parsers that follow it (python-multipart)
    ignore it and read `filename`. Others prefer it: busboy (multer) reads `filename` as Latin-1
    unless told otherwise and so garbles raw UTF-8; Werkzeug turns a literal `%22` in `filename`
    into `"`. From `filename*`, they get the exact name. See README, "The two EHR APIs".
    """
    plain = f'filename="{_quoted_filename(name)}"'
    if all(char in _PLAIN for char in name):
        return plain
    extended = "filename*=UTF-8''" + quote(name, safe="", errors="surrogateescape")
    if name.endswith("\\"):
        # python-multipart finds where a parameter ends by counting quotes, and takes the `\\"`
        # that ends this one for an escaped quote: read last, it is whole. Werkzeug, which
        # takes the last of the two, reads this one right too (unless it holds a literal %22).
        return f"{extended}; {plain}"
    # RFC 6266's order; Werkzeug takes the last of the two, busboy `filename*` wherever it is.
    return f"{plain}; {extended}"


class MultipartBody(StreamingBody):
    """multipart/form-data: the text `fields` in order, then the file as `file_field`."""

    def __init__(
        self,
        upload: Upload,
        fields: Sequence[tuple[str, str]],
        file_field: str = "file",
        boundary: str | None = None,
    ) -> None:
        self.boundary = boundary or f"ingestd-{secrets.token_hex(16)}"
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        dash = f"--{self.boundary}\r\n"
        head = bytearray()
        for name, value in fields:
            disposition = f'form-data; name="{quote_form_name(name)}"'
            head += f"{dash}Content-Disposition: {disposition}\r\n\r\n".encode()
            head += value.encode("utf-8", "surrogateescape") + b"\r\n"
        mime = upload.mime if upload.mime.isprintable() else "application/octet-stream"
        head += (
            f'{dash}Content-Disposition: form-data; name="{quote_form_name(file_field)}"; '
            f"{filename_params(upload.file_name)}\r\n"
            f"Content-Type: {mime}\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        super().__init__(len(head) + upload.size + len(tail), self._gen(upload, bytes(head), tail))

    @staticmethod
    def _gen(upload: Upload, head: bytes, tail: bytes) -> Iterator[bytes]:
        yield head
        yield from file_chunks(upload)
        yield tail
