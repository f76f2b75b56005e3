"""Type detection against real files and the signatures' edge cases (issue 11, item 3).

DICM at byte 128 decides before any other signature (the DICOM preamble may hold a TIFF
header); "%PDF-" may start anywhere in the first 1024 bytes; a zip is DOCX only when it declares
a Word document; every JPEG starts FF D8 FF whatever marker follows.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

from ingestd import content
from ingestd.sandbox.samples import dicom, jpeg, pdf, png, tiff

DICOM = "application/dicom"
PDF = "application/pdf"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"


def _detect(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "no-extension"
    path.write_bytes(data)
    fd, _ = content.open_regular(path)
    try:
        return content.detect_format(fd)
    finally:
        os.close(fd)


# --- DICOM ----------------------------------------------------------------------------------


def _pydicom_files() -> list[Path]:
    pydicom_data = pytest.importorskip(
        "pydicom.data", reason="pydicom (the test extra) ships real DICOM files"
    )
    folder = Path(pydicom_data.get_testdata_file("CT_small.dcm")).parent
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicoms_files_with_a_tiff_preamble_are_dicom(tmp_path: Path, name: str) -> None:
    pydicom_data = pytest.importorskip(
        "pydicom.data", reason="pydicom (the test extra) ships real DICOM files"
    )
    data = Path(pydicom_data.get_testdata_file(name)).read_bytes()
    assert data[:4] == b"II*\x00"
    assert data[128:132] == b"DICM"
    assert _detect(tmp_path, data) == DICOM


def test_every_pydicom_part_10_file_is_dicom(tmp_path: Path) -> None:
    files = [p for p in _pydicom_files() if p.read_bytes()[128:132] == b"DICM"]
    assert len(files) > 40
    wrong = {p.name: _detect(tmp_path, p.read_bytes()) for p in files}
    assert {name: mime for name, mime in wrong.items() if mime != DICOM} == {}


@pytest.mark.parametrize(
    "preamble",
    [
        tiff("preamble")[:128],  # little-endian TIFF header, as pydicom's files have
        b"MM\x00*" + b"\x00\x00\x00\x08" + b"\x00" * 120,  # big-endian TIFF
        jpeg("preamble")[:128],
        png("preamble")[:128],
        pdf("preamble")[:128],
        b"PK\x03\x04" + b"\x00" * 124,
    ],
    ids=["tiff-le", "tiff-be", "jpeg", "png", "pdf", "zip"],
)
def test_dicm_at_128_decides_whatever_the_preamble_holds(tmp_path: Path, preamble: bytes) -> None:
    data = dicom("constructed")
    preamble = preamble.ljust(128, b"\x00")[:128]
    assert _detect(tmp_path, preamble + data[128:]) == DICOM


def test_dicm_elsewhere_is_not_dicom(tmp_path: Path) -> None:
    assert _detect(tmp_path, tiff("x")[:127] + b"DICM" + b"\x00" * 64) == "image/tiff"


# --- PDF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        b"\x1b%-12345X@PJL JOB\r\n@PJL ENTER LANGUAGE = PDF\r\n",  # a printer's PJL header
        b"\x00" * 100,
        bytes(range(1, 256)) * 2,
        b"\xef\xbb\xbf",  # a byte order mark
        b"x" * 1019,  # "%PDF-" starts at byte 1019, its last byte is byte 1023
        b"\x00" * 1023,  # starts at the last byte of the first 1024
    ],
    ids=["pjl", "nuls", "binary", "bom", "text-1019", "nuls-1023"],
)
def test_a_pdf_with_bytes_before_its_header_within_1024_is_pdf(tmp_path: Path, junk: bytes) -> None:
    assert _detect(tmp_path, junk + pdf("junk")) == PDF


@pytest.mark.parametrize(
    "junk",
    [b"x" * 1024, b"\x00" * 1024, b"\x00" * 4000],
    ids=["text-1024", "nuls-1024", "nuls-4000"],
)
def test_a_pdf_header_beyond_1024_is_not_pdf(tmp_path: Path, junk: bytes) -> None:
    assert _detect(tmp_path, junk + pdf("late")) == ""  # not recognised: unsupported_type


def test_a_real_pdf_from_a_debian_package_is_pdf(tmp_path: Path) -> None:
    found = sorted(Path("/usr/share/doc").glob("*/*.pdf"))
    if not found:
        pytest.skip("no PDF under /usr/share/doc on this machine")
    assert _detect(tmp_path, found[0].read_bytes()) == PDF


def test_a_signature_at_the_start_wins_over_a_later_pdf_header(tmp_path: Path) -> None:
    assert _detect(tmp_path, png("x") + b"%PDF-1.4\n") == "image/png"


# --- ZIP, DOCX and the other OOXML formats -----------------------------------------------------


def _ooxml(main_part: str, main_type: str, first: str = "[Content_Types].xml") -> bytes:
    types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/{main_part}" ContentType="{main_type}"/></Types>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
        'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
        "schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
        f'" Target="{main_part}"/></Relationships>'
    )
    parts = {"[Content_Types].xml": types, "_rels/.rels": rels, main_part: "<x/>"}
    order = [first, *(name for name in parts if name != first)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in order:
            archive.writestr(name, parts[name])
    return buffer.getvalue()


WORD_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"


@pytest.mark.parametrize("first", ["[Content_Types].xml", "_rels/.rels", "word/document.xml"])
def test_a_word_document_is_docx_whatever_its_first_entry(tmp_path: Path, first: str) -> None:
    assert _detect(tmp_path, _ooxml("word/document.xml", WORD_MAIN, first)) == content.DOCX


@pytest.mark.parametrize(
    ("main_part", "main_type", "expected"),
    [
        (
            "xl/workbook.xml",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
            XLSX,
        ),
        (
            "ppt/presentation.xml",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml",
            PPTX,
        ),
        # A macro-enabled document and a template have word/document.xml but are not DOCX.
        ("word/document.xml", "application/vnd.ms-word.document.macroEnabled.main+xml", "zip"),
        (
            "word/document.xml",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml",
            "zip",
        ),
    ],
    ids=["xlsx", "pptx", "docm", "dotx"],
)
def test_other_ooxml_is_not_docx(
    tmp_path: Path, main_part: str, main_type: str, expected: str
) -> None:
    found = _detect(tmp_path, _ooxml(main_part, main_type))
    assert found != content.DOCX
    assert found == (content.ZIP if expected == "zip" else expected)


def test_a_zip_with_word_entries_but_no_content_types_is_not_docx(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<x/>")
        archive.writestr("notes.txt", "application/vnd.openxmlformats-officedocument.word")
    assert _detect(tmp_path, buffer.getvalue()) == content.ZIP


def test_a_truncated_zip_is_not_docx(tmp_path: Path) -> None:
    data = _ooxml("word/document.xml", WORD_MAIN)
    assert _detect(tmp_path, data[: len(data) // 2]) != content.DOCX


def test_a_word_document_with_damaged_compressed_data_is_not_docx(tmp_path: Path) -> None:
    """Its [Content_Types].xml inflates to garbage: zlib's own error, not a crash of the daemon
    (every look at the file would have raised it again)."""
    data = bytearray(_ooxml("word/document.xml", WORD_MAIN, "[Content_Types].xml"))
    start = data.index(b"[Content_Types].xml") + len(b"[Content_Types].xml")
    data[start : start + 40] = bytes(range(200, 240))  # the member's deflate stream
    assert _detect(tmp_path, bytes(data)) != content.DOCX


# --- JPEG -----------------------------------------------------------------------------------


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


@pytest.mark.parametrize(
    "after_soi",
    [
        _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
        _segment(0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"),
        _segment(0xDB, b"\x00" + bytes(range(64))),  # raw: a quantisation table straight away
        _segment(0xC4, b"\x00" + b"\x01" * 16 + b"\x00"),  # raw: a Huffman table
        _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01"),  # Adobe APP14
        _segment(0xFE, b"a comment"),
        _segment(0xE2, b"ICC_PROFILE\x00\x01\x01"),
    ],
    ids=["jfif", "exif", "dqt", "dht", "adobe", "comment", "icc"],
)
def test_jpeg_variants_are_jpeg(tmp_path: Path, after_soi: bytes) -> None:
    assert _detect(tmp_path, b"\xff\xd8" + after_soi + b"\x00" * 64 + b"\xff\xd9") == "image/jpeg"


def test_real_jpegs_are_jpeg(tmp_path: Path) -> None:
    found = sorted(Path("/usr/share").glob("**/*.jpg"))[:5]
    if not found:
        pytest.skip("no JPEG under /usr/share on this machine")
    assert {_detect(tmp_path, p.read_bytes()) for p in found} == {"image/jpeg"}
