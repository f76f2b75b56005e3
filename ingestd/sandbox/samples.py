"""Small, valid sample documents of each type, for the demo, the tests and the benchmarks.

Each maker returns bytes whose type `filetype` recognises; `tag` makes contents unique, `size`
pads a document (PDF: inside a comment) to a given length.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from collections.abc import Callable

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _filler(tag: str, size: int) -> bytes:
    """Deterministic bytes that do not compress (like a real scan)."""
    out = bytearray()
    counter = 0
    seed = tag.encode()
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def pdf(tag: str = "", size: int = 0) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    body = (
        b"1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    )
    tail = b"trailer<</Root 1 0 R>>\n%%EOF\n"
    note = b"% " + tag.encode() + b"\n"
    pad = max(0, size - len(head) - len(body) - len(tail) - len(note) - 3)
    filler = _filler(tag, pad).replace(b"\n", b" ").replace(b"\r", b" ")
    return head + body + note + b"%" + filler + b"\n\n" + tail if pad else head + body + note + tail


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(tag: str = "", size: int = 0) -> bytes:
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    text = _chunk(b"tEXt", b"Comment\x00" + tag.encode())
    image = _chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    end = _chunk(b"IEND", b"")
    pad = max(0, size - len(header) - len(text) - len(image) - len(end) - 12)
    extra = _chunk(b"zzZz", _filler(tag, pad)) if pad else b""
    return header + text + extra + image + end


def jpeg(tag: str = "", size: int = 0) -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    comment = tag.encode()[:60000]
    com = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    filler = _filler(tag, max(0, size - len(app0) - len(com) - 4)).replace(b"\xff", b"\x00")
    return b"\xff\xd8" + app0 + com + filler + b"\xff\xd9"


def tiff(tag: str = "", size: int = 0) -> bytes:
    # Little-endian TIFF: header, one IFD with a 1x1 image, then the tag text as pixel data.
    data = tag.encode() or b"\x00"
    data += _filler(tag, max(0, size - 8 - 2 - 12 * 6 - 4 - len(data)))
    entries = [
        (256, 4, 1, 1),  # width
        (257, 4, 1, 1),  # height
        (258, 3, 1, 8),  # bits per sample
        (262, 3, 1, 1),  # photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 6 + 4),  # strip offset
        (279, 4, 1, len(data)),  # strip byte count
    ]
    ifd = struct.pack("<H", len(entries))
    for code, kind, count, value in entries:
        ifd += struct.pack("<HHII", code, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def docx(tag: str = "", size: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
            'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
            'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
            'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
            'Target="word/document.xml"/></Relationships>',
        )
        archive.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
            'openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>'
            + tag
            + "</w:t></w:r></w:p></w:body></w:document>",
        )
        if size:
            archive.writestr(zipfile.ZipInfo("word/media/scan.bin"), _filler(tag, size))
    return buffer.getvalue()


def dicom(tag: str = "", size: int = 0) -> bytes:
    element = tag.encode() or b"x"
    if len(element) % 2:
        element += b" "
    value = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", len(element)) + element
    return b"\x00" * 128 + b"DICM" + value + _filler(tag, max(0, size - 132 - len(value)))


def text(tag: str = "", size: int = 0) -> bytes:
    line = f"Lab note {tag}\n".encode()
    return line * max(1, size // len(line))


def gif(tag: str = "", size: int = 0) -> bytes:
    """A type neither EHR takes: for refusal tests."""
    return b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" + tag.encode() + _filler(tag, size)


SAMPLES: dict[str, Callable[..., bytes]] = {
    "application/pdf": pdf,
    "image/png": png,
    "image/jpeg": jpeg,
    "image/tiff": tiff,
    DOCX: docx,
    "application/dicom": dicom,
    "text/plain": text,
}
