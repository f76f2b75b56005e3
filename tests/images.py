"""Real image files for the conversion tests: fax TIFFs as fax software writes them (Pillow
with libtiff; big-endian ones by libtiff's own tiffcp), JPEGs with EXIF orientation, PNGs
with and without alpha."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, TiffImagePlugin

FAX_DPI = (204, 196)  # fine-mode fax: not square, so a stretched page shows
FAX_SIZE = (1728, 2200)  # a fax line is 1728 pixels; about an A4 page at 196 lines/inch


def fax_page(number: int, size: tuple[int, int] = FAX_SIZE) -> Image.Image:
    page = Image.new("1", size, 1)
    draw = ImageDraw.Draw(page)
    for row in range(20):
        draw.text((80, 100 + row * 90), f"page {number} line {row} " * 6, fill=0)
    draw.rectangle((60, 60, size[0] - 60, size[1] - 60), outline=0, width=4)
    return page


def fax_tiff(
    pages: int = 3,
    compression: str = "group4",
    size: tuple[int, int] = FAX_SIZE,
    strip_bytes: int = 1 << 30,
) -> bytes:
    """A multi-page bilevel TIFF (little-endian, as Pillow writes it); one strip per page
    unless `strip_bytes` (of uncompressed rows) cuts it into several."""
    frames = [fax_page(n + 1, size) for n in range(pages)]
    out = io.BytesIO()
    # One strip per page, as fax software writes it (Pillow otherwise cuts 64 KiB strips).
    strip_size = TiffImagePlugin.STRIP_SIZE
    TiffImagePlugin.STRIP_SIZE = strip_bytes
    try:
        frames[0].save(
            out, "TIFF", compression=compression, save_all=True, append_images=frames[1:],
            dpi=FAX_DPI,
        )  # fmt: skip
    finally:
        TiffImagePlugin.STRIP_SIZE = strip_size
    return out.getvalue()


def big_endian(tiff: bytes, tmp_path: Path, compression: str = "g4") -> bytes:
    """The same pages written big-endian ("MM") by libtiff's tiffcp."""
    tiffcp = shutil.which("tiffcp")
    if tiffcp is None:
        pytest.skip("libtiff-tools (tiffcp) is not installed: tests/tools.sh installs it")
    src, dest = tmp_path / "le.tif", tmp_path / "be.tif"
    src.write_bytes(tiff)
    subprocess.run([tiffcp, "-B", "-c", compression, str(src), str(dest)], check=True)
    data = dest.read_bytes()
    assert data[:2] == b"MM"
    return data


def jpeg(
    size: tuple[int, int] = (1200, 800), orientation: int | None = None, quality: int = 90
) -> bytes:
    image = Image.new("RGB", size, (240, 240, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((50, 50, size[0] // 2, size[1] // 3), fill=(200, 30, 30))
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=quality, exif=exif.tobytes(), dpi=(300, 300))
    return out.getvalue()


def png(mode: str = "RGB", size: tuple[int, int] = (400, 300)) -> bytes:
    image = Image.new(mode, size)
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 200, 150), fill=(10, 120, 200, 128)[: len(mode)] if mode != "L" else 90)
    out = io.BytesIO()
    image.save(out, "PNG", dpi=(150, 150))
    return out.getvalue()


def png16_alpha(size: tuple[int, int] = (64, 48)) -> bytes:
    """An RGBA PNG with 16 bits per channel (Pillow cannot write one: built by hand)."""
    import struct
    import zlib

    width, height = size
    row = b"\x00" + b"\x12\x34\x56\x78\x9a\xbc\x80\x00" * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
