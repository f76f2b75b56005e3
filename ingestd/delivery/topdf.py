"""Images to one PDF, losslessly and deterministically, with img2pdf.

img2pdf embeds CCITT G3/G4 and JPEG data as they are (no re-encoding), gives every page of a
multi-page TIFF its own page in order, sized from the image's own resolution (a 204×196 dpi
fax keeps its proportions), and turns EXIF orientation into the page's /Rotate. Other pixel data
(LZW, uncompressed, PNG) is stored with lossless Flate compression. With its own writer
(`Engine.internal`, the same in Debian 12's 0.4.4 and today's releases) and no dates, the output
has no creation time and no /ID: the same source gives the same bytes, so a conversion
repeated after a crash matches the hash the journal recorded.

Memory: the source is read whole (the compressed image data is carried, not decoded) and the
PDF is written to the caller's stream as it is made. img2pdf's writer joins each object into one
bytes before writing it (two passing copies of a JPEG's whole data); `_StreamingWriter` writes the
same bytes with the image data passed through as it is, so converting costs about the source's
size and no more.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO

import img2pdf
from PIL import Image

CHUNK = 1024 * 1024


class _StreamingWriter(img2pdf.MyPdfWriter):
    """img2pdf's internal PDF writer (the same in Debian 12's 0.4.4 and today's releases),
    writing an object's stream without first joining it to the object's dictionary: the bytes
    written are identical (tests compare them with img2pdf's own writer)."""

    def tostream(
        self, info: Any, stream: Any, version: str = "1.3", ident: bytes | None = None
    ) -> None:
        if ident is not None:  # PDF/A only, which ingestd never asks for
            super().tostream(info, stream, version, ident)
            return
        header = b"%%PDF-%s\n%%\xe2\xe3\xcf\xd3\n" % version.encode("ascii")
        stream.write(header)
        pos = len(header)
        xref = [b"0000000000 65535 f \n"]
        for obj in self.objects:
            xref.append(b"%010d 00000 n \n" % pos)
            pos += _write_object(obj, stream)
        stream.write(b"xref\n0 %d\n" % len(xref))
        stream.write(b"".join(xref))
        stream.write(b"trailer\n")
        trailer = {b"/Size": len(xref), b"/Info": info, b"/Root": self.catalog}
        stream.write(img2pdf.parse(trailer) + b"\n")
        stream.write(b"startxref\n%d\n%%%%EOF\n" % pos)


def _write_object(obj: Any, stream: Any) -> int:
    """Write one of img2pdf's objects as its `tostring()` would, its stream data by itself."""
    if obj.stream is None:
        data: bytes = obj.tostring()
        stream.write(data)
        return len(data)
    head = b"%d 0 obj\n" % obj.identifier + img2pdf.parse(obj.content) + b"\nstream\n"
    tail = b"\nendstream\nendobj\n"
    stream.write(head)
    stream.write(obj.stream)
    stream.write(tail)
    return len(head) + len(obj.stream) + len(tail)


# img2pdf's document picks its writer class from the module when it is made; ours writes the
# same bytes, so every conversion in this process (there is no other user of img2pdf) uses it.
img2pdf.MyPdfWriter = _StreamingWriter


class ConversionFailed(Exception):
    """The source cannot be converted; `message` says why and what to do (no PHI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Converted:
    """The PDF written: its SHA-256, size in bytes and number of pages."""

    sha256: str
    size: int
    pages: int


class _Sink:
    """Hashes and counts what img2pdf writes; a write error is not a conversion error."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.out is not None:
            try:
                self.out.write(data)
            except OSError as exc:
                self.error = exc
                raise
        return len(data)


def read_all(fd: int, size: int) -> bytes:
    """The whole file behind `fd` (from offset 0, by pread: the descriptor's offset is kept).
    One read for a regular file: no parts joined, so no second copy of the source."""
    data = os.pread(fd, size, 0)
    if len(data) == size:
        return data
    parts = [data]  # a short read (a network share): the rest in parts
    offset = len(data)
    while offset < size:
        part = os.pread(fd, min(CHUNK, size - offset), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def convert(fd: int, size: int, out: BinaryIO | None) -> Converted:
    """Convert the image behind `fd` into a PDF written to `out` (None: only measured).

    Raises ConversionFailed for a source that cannot be converted (corrupt, truncated, an
    unsupported compression or colour model); OSError when `out` cannot be written.
    """
    data = read_all(fd, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd EXIF data
            _check_whole(data)
    # Pillow raises many types for a damaged image (see below).
    except Exception as exc:  # noqa: BLE001
        raise ConversionFailed(_explain(exc, damaged=True)) from None
    pages = 0

    def layout(width: int, height: int, dpi: tuple[float, float]) -> tuple[float, ...]:
        nonlocal pages
        pages += 1  # img2pdf lays out each page once, in order
        result: tuple[float, ...] = img2pdf.default_layout_fun(width, height, dpi)
        return result

    sink = _Sink(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd EXIF data
            img2pdf.convert(
                data,
                engine=img2pdf.Engine.internal,
                nodate=True,
                layout_fun=layout,
                outputstream=sink,
            )
    # img2pdf and Pillow raise many types (their own, ValueError, OSError, struct.error,
    # EOFError, ...) for a file they cannot read: each is this file's failure, not ours.
    except Exception as exc:  # noqa: BLE001
        if sink.error is not None:
            raise sink.error from None
        raise ConversionFailed(_explain(exc)) from None
    if pages == 0:
        raise ConversionFailed("the image holds no page")
    return Converted(sink.digest.hexdigest(), sink.size, pages)


def _check_whole(data: bytes) -> None:
    """Raise when the image data is damaged. img2pdf copies compressed data without decoding
    it, so a truncated strip or JPEG would become a PDF page that shows garbage: read it
    through first, at little cost — a TIFF page at a time, a JPEG at 1/8 scale (libjpeg
    still reads every byte), a PNG by its chunks' checksums."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            image.verify()
            return
        if image.format == "JPEG":
            image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            return
        for frame in range(getattr(image, "n_frames", 1)):
            image.seek(frame)
            image.load()


def _explain(exc: Exception, damaged: bool = False) -> str:
    """What a receipt says about a file that could not be converted (never its content)."""
    name = type(exc).__name__
    if damaged:
        reason = f"the image is damaged or truncated ({name}); scan or send it again"
    elif name == "AlphaChannelError":
        reason = (
            "it has transparency (an alpha channel) that cannot be kept without loss; save it "
            "without transparency (flatten it)"
        )
    elif name == "ExifOrientationError":
        reason = "its EXIF orientation is a mirror image, which a PDF page cannot show; rotate it"
    elif name == "ImageOpenError":
        reason = "it is not a readable image (corrupt or truncated); scan it again"
    else:
        reason = f"the image cannot be read ({name}); scan it again or save it in another format"
    return f"cannot convert to PDF: {reason}, then `ingestd retry`"
