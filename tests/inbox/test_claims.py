"""Claiming: what the settle look judged travels with the claim only while it is the same file."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from ingestd.content import Snapshot
from ingestd.inbox.claims import Claimer
from ingestd.inbox.settle import Ready
from ingestd.journal import Journal
from ingestd.observe.logs import Masker
from tests.samples import pdf, png

REL = PurePosixPath("p_1/scan.pdf")


def _claimer(tmp_path: Path) -> Claimer:
    claimer = Claimer(tmp_path / "inbox", Journal(tmp_path / "j.sqlite"), "me", Masker(b"k"))
    (tmp_path / "inbox" / "p_1").mkdir(parents=True)
    claimer.prepare()
    return claimer


def test_the_settled_type_and_owner_travel_with_the_claim(tmp_path: Path) -> None:
    claimer = _claimer(tmp_path)
    path = claimer.inbox / REL
    path.write_bytes(pdf("a"))
    ready = Ready(REL, time.time(), Snapshot.of(path.stat()), format="application/pdf")
    row = claimer.claim(ready)
    assert row is not None
    assert row.state == "claiming"
    assert row.format == "application/pdf"
    assert row.owner_uid == os.getuid()
    assert row == claimer.journal.get(row.id)


def test_a_file_replaced_before_the_claim_and_kept_is_typed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimer = _claimer(tmp_path)
    path = claimer.inbox / REL
    path.write_bytes(pdf("looked at"))
    ready = Ready(REL, time.time(), Snapshot.of(path.stat()), format="application/pdf")
    path.unlink()
    path.write_bytes(png("put there after the look"))  # another inode, another type
    # Its inbox path is taken again by the time it would be given back: the claim keeps it.
    monkeypatch.setattr(Claimer, "_give_back", lambda self, work, source: False)
    row = claimer.claim(ready)
    assert row is not None
    assert row.format is None  # the pipeline detects it anew, never trusts the old look
    assert row == claimer.journal.get(row.id)
