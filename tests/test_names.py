from pathlib import PurePosixPath

import pytest

from ingestd.names import display, is_ignored_name, is_ignored_path, patient_folder


@pytest.mark.parametrize(
    "name",
    [
        ".hidden",
        "scan.tmp",
        "scan.PART",
        "a.crdownload",
        "~$report.docx",
        ".~lock.a.docx#",
        "Thumbs.db",
        "desktop.ini",
        "",
    ],
)
def test_temporary_and_hidden_names_are_ignored(name: str) -> None:
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["scan.pdf", "lab result 1.tiff", "ärende.docx", "tmp.pdf"])
def test_document_names_are_not_ignored(name: str) -> None:
    assert not is_ignored_name(name)


def test_any_hidden_component_hides_the_path() -> None:
    assert is_ignored_path(PurePosixPath("p1/.sync/scan.pdf"))
    assert not is_ignored_path(PurePosixPath("p1/lab/scan.pdf"))


def test_patient_folder_is_the_first_component_and_root_files_have_none() -> None:
    assert patient_folder(PurePosixPath("191212121212/lab/x.pdf")) == "191212121212"
    assert patient_folder(PurePosixPath("x.pdf")) is None


def test_display_escapes_control_characters() -> None:
    assert display("a\nb\x1b.pdf") == "a\\x0ab\\x1b.pdf"
