"""Images to PDF with the real img2pdf and Pillow: fax TIFFs (G3, G4, LZW, several pages, both
byte orders), JPEG with EXIF rotation, PNG with and without alpha, and damaged files."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import img2pdf
import pytest
from PIL import Image

from ingestd.delivery.topdf import ConversionFailed, Converted, convert
from tests import images


def _reader(pdf: bytes) -> Any:
    """pypdf's reader of a PDF made (a test extra: the package build, without it, skips)."""
    pypdf = pytest.importorskip("pypdf", minversion="4", reason="pypdf (a test extra) reads PDFs")
    return pypdf.PdfReader(io.BytesIO(pdf))


def _convert(tmp_path: Path, data: bytes) -> tuple[Converted, bytes]:
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        out = io.BytesIO()
        made = convert(fd, len(data), out)
    finally:
        os.close(fd)
    return made, out.getvalue()


def _image(page: Any) -> Any:
    xobjects = page["/Resources"]["/XObject"]
    return next(iter(xobjects.values())).get_object()


def _one(value: Any) -> Any:
    """A filter or its parameters: img2pdf writes one, or an array of one (newer versions)."""
    if isinstance(value, list):
        assert len(value) == 1
        return value[0].get_object() if hasattr(value[0], "get_object") else value[0]
    return value


def _strips(tiff: bytes) -> list[tuple[int, ...]]:
    """Bytes of compressed data of each strip, page by page, as the TIFF holds them."""
    sizes = []
    with Image.open(io.BytesIO(tiff)) as image:
        for frame in range(image.n_frames):
            image.seek(frame)
            sizes.append(tuple(image.tag_v2[279]))
    return sizes


def _pixels(page: Any) -> bytes:
    return bytes(_image(page).decode_as_image().convert("1").tobytes())


def test_g4_fax_pages_are_embedded_as_they_are_in_order_at_their_resolution(
    tmp_path: Path,
) -> None:
    tiff = images.fax_tiff(pages=3, compression="group4")
    made, pdf = _convert(tmp_path, tiff)
    assert made.pages == 3
    assert made.size == len(pdf)
    assert made.sha256 == hashlib.sha256(pdf).hexdigest()
    reader = _reader(pdf)
    assert len(reader.pages) == 3
    for page, strip in zip(reader.pages, _strips(tiff), strict=True):
        # 1728 × 2200 pixels at 204 × 196 dpi: 8.47 × 11.22 inches, not stretched to square.
        assert float(page.mediabox.width) == pytest.approx(1728 / 204 * 72, abs=0.01)
        assert float(page.mediabox.height) == pytest.approx(2200 / 196 * 72, abs=0.01)
        image = _image(page)
        assert _one(image["/Filter"]) == "/CCITTFaxDecode"
        params = _one(image["/DecodeParms"])
        assert params["/K"] == -1
        assert len(image._data) == sum(strip), "the CCITT data was re-encoded"


@pytest.mark.parametrize(
    ("compression", "strip_bytes"),
    [("group3", 1 << 30), ("group4", 8 * 1024)],
    ids=["g3", "g4-in-several-strips"],
)
def test_a_fax_re_coded_as_g4_keeps_every_pixel(
    tmp_path: Path, compression: str, strip_bytes: int
) -> None:
    # A PDF image is one CCITT stream: G4 strips cannot be joined (each starts from an imagined
    # white line) and G3's TIFF options do not map one-to-one onto PDF's, so img2pdf decodes
    # such a page and encodes it as one G4 stream, which CCITT does without loss.
    tiff = images.fax_tiff(pages=2, compression=compression, strip_bytes=strip_bytes)
    if compression == "group4":
        assert min(len(strips) for strips in _strips(tiff)) > 1
    made, pdf = _convert(tmp_path, tiff)
    assert made.pages == 2
    with Image.open(io.BytesIO(tiff)) as original:
        for number, page in enumerate(_reader(pdf).pages):
            original.seek(number)
            assert _one(_image(page)["/Filter"]) == "/CCITTFaxDecode"
            assert _pixels(page) == original.convert("1").tobytes()


def test_pages_keep_their_order(tmp_path: Path) -> None:
    # Pages of different heights: their order shows in the PDF's page sizes.
    frames = [images.fax_page(n, (1728, 1000 + 200 * n)) for n in range(4)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", compression="group4", save_all=True, append_images=frames[1:],
                   dpi=images.FAX_DPI)  # fmt: skip
    _, pdf = _convert(tmp_path, out.getvalue())
    heights = [round(float(p.mediabox.height)) for p in _reader(pdf).pages]
    assert heights == [round((1000 + 200 * n) / 196 * 72) for n in range(4)]


def test_big_endian_fax_from_libtiff(tmp_path: Path) -> None:
    tiff = images.big_endian(images.fax_tiff(pages=2), tmp_path)
    made, pdf = _convert(tmp_path, tiff)
    assert made.pages == 2
    image = _image(_reader(pdf).pages[1])
    assert _one(image["/Filter"]) == "/CCITTFaxDecode"


def test_lzw_tiff_is_kept_losslessly(tmp_path: Path) -> None:
    tiff = images.fax_tiff(pages=2, compression="tiff_lzw", size=(400, 300))
    made, pdf = _convert(tmp_path, tiff)
    assert made.pages == 2
    reader = _reader(pdf)
    with Image.open(io.BytesIO(tiff)) as original:
        for number, page in enumerate(reader.pages):
            original.seek(number)
            assert _pixels(page) == original.convert("1").tobytes()  # every pixel the same


def test_jpeg_is_embedded_as_it_is_with_its_exif_rotation(tmp_path: Path) -> None:
    data = images.jpeg(orientation=6)  # "rotate 90° clockwise to view"
    made, pdf = _convert(tmp_path, data)
    page = _reader(pdf).pages[0]
    assert made.pages == 1
    assert page.get("/Rotate") == 90
    image = _image(page)
    assert _one(image["/Filter"]) == "/DCTDecode"
    assert image._data == data


def test_mirrored_exif_orientation_fails_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="mirror image"):
        _convert(tmp_path, images.jpeg(orientation=2))


def test_png_with_8_bit_alpha_keeps_it_as_a_soft_mask(tmp_path: Path) -> None:
    made, pdf = _convert(tmp_path, images.png("RGBA"))
    image = _image(_reader(pdf).pages[0])
    assert made.pages == 1
    assert "/SMask" in image


def test_png_with_16_bit_alpha_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="transparency"):
        _convert(tmp_path, images.png16_alpha())


@pytest.mark.parametrize("cut", [0.5, 0.9], ids=["half", "most"])
def test_truncated_tiff_fails(tmp_path: Path, cut: float) -> None:
    tiff = images.fax_tiff(pages=3)
    with pytest.raises(ConversionFailed, match=r"damaged or truncated|not a readable image"):
        _convert(tmp_path, tiff[: int(len(tiff) * cut)])


def test_corrupt_tiff_fails(tmp_path: Path) -> None:
    tiff = bytearray(images.fax_tiff(pages=1))
    tiff[4:8] = (len(tiff) + 1000).to_bytes(4, "little")  # the first directory is nowhere
    with pytest.raises(ConversionFailed, match="damaged or truncated"):
        _convert(tmp_path, bytes(tiff))


def test_truncated_jpeg_fails(tmp_path: Path) -> None:
    data = images.jpeg()
    with pytest.raises(ConversionFailed, match="damaged or truncated"):
        _convert(tmp_path, data[: len(data) // 2])


def test_the_same_source_gives_the_same_bytes(tmp_path: Path) -> None:
    tiff = images.fax_tiff(pages=2)
    first, pdf = _convert(tmp_path, tiff)
    second, again = _convert(tmp_path, tiff)
    assert pdf == again
    assert first == second
    assert b"/CreationDate" not in pdf
    assert b"/ModDate" not in pdf
    assert b"/ID" not in pdf


@pytest.mark.parametrize(
    "source",
    [images.fax_tiff(pages=2), images.jpeg(orientation=6), images.png("RGBA")],
    ids=["fax", "jpeg", "png-alpha"],
)
def test_the_writer_writes_what_img2pdfs_own_writer_writes(source: bytes) -> None:
    """ingestd writes a stream's data by itself (memory); the bytes must stay img2pdf's."""
    ours = img2pdf.convert(source, engine=img2pdf.Engine.internal, nodate=True)
    streaming = img2pdf.MyPdfWriter
    img2pdf.MyPdfWriter = streaming.__mro__[1]  # img2pdf's own
    try:
        theirs = img2pdf.convert(source, engine=img2pdf.Engine.internal, nodate=True)
    finally:
        img2pdf.MyPdfWriter = streaming
    assert ours == theirs


def test_converting_a_jpeg_costs_about_its_own_size(tmp_path: Path) -> None:
    """The compressed data is carried once: read (1×), never joined or decoded at full size.
    img2pdf's own writer alone would hold it three times over (bench/convert.py measures)."""
    noise = Image.frombytes("RGB", (1500, 1500), random.Random(7).randbytes(1500 * 1500 * 3))
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=90)
    source = tmp_path / "photo.jpg"
    source.write_bytes(out.getvalue())
    size = source.stat().st_size
    assert size > 2_000_000
    fd = os.open(source, os.O_RDONLY)
    tracemalloc.start()
    try:
        with open(tmp_path / "photo.pdf", "wb") as pdf:
            convert(fd, size, pdf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert peak < 1.1 * size + 300_000, f"converting took {peak / size:.2f}x the source"
