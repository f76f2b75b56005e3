"""Names and moves in done/ and failed/ (pure path logic on a fake file system)."""

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

from ingestd.filing.places import candidate, free_name, place, split_name
from ingestd.filing.receipts import SUFFIX


def test_split_name() -> None:
    assert split_name("scan.pdf") == ("scan", ".pdf")
    assert split_name("README") == ("README", "")
    assert split_name(".profile") == (".profile", "")
    assert split_name("a.tar.gz") == ("a.tar", ".gz")


def test_collision_names_count_up_and_skip_receipt_names() -> None:
    with Patcher() as patcher:
        fs = patcher.fs
        fs.create_file("/done/p1/scan.pdf")
        fs.create_file("/done/p1/scan (1).pdf" + SUFFIX)  # a receipt alone also blocks the name
        assert free_name(Path("/done/p1"), "scan.pdf") == "scan (2).pdf"
        assert free_name(Path("/done/p1"), "new.pdf") == "new.pdf"
        assert free_name(Path("/done/nowhere"), "x.pdf") == "x.pdf"


def test_long_names_are_shortened_so_the_receipt_name_fits() -> None:
    name = "å" * 200 + ".pdf"  # 404 bytes
    short = candidate(name, 0)
    assert short.endswith(".pdf")
    assert len(os.fsencode(short + SUFFIX)) <= 255
    numbered = candidate(name, 12)
    assert numbered.endswith(" (12).pdf")
    assert len(os.fsencode(numbered + SUFFIX)) <= 255


def test_place_never_overwrites() -> None:
    with Patcher() as patcher:
        fs = patcher.fs
        fs.create_file("/work/a.pdf", contents=b"new")
        fs.create_file("/done/p1/a.pdf", contents=b"old")
        with pytest.raises(FileExistsError):
            place(Path("/work/a.pdf"), Path("/done/p1/a.pdf"))
        assert Path("/done/p1/a.pdf").read_bytes() == b"old"
        assert Path("/work/a.pdf").exists()
        place(Path("/work/a.pdf"), Path("/done/p1/b.pdf"))
        assert Path("/done/p1/b.pdf").read_bytes() == b"new"
        assert not Path("/work/a.pdf").exists()


def test_place_moves_a_symlink_itself_not_its_target(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    link = tmp_path / "work" / "link.pdf"
    link.parent.mkdir()
    link.symlink_to(secret)
    dest = tmp_path / "failed" / "p1" / "link.pdf"
    place(link, dest)
    assert dest.is_symlink()
    assert os.readlink(dest) == str(secret)
    assert secret.read_text() == "s"
