"""Claiming: what the settle look judged travels with the claim only while it is the same file."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from ingestd.content import Snapshot
from ingestd.inbox.claims import Claimer, claim_key, claim_of
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


def test_a_taken_over_claim_keeps_the_identity_of_its_document(tmp_path: Path) -> None:
    """A FHIR document's identifier comes from the claim: another instance taking the file
    over must send it under the same one (issue 17)."""
    gone = _claimer(tmp_path)
    path = gone.inbox / REL
    path.write_bytes(pdf("a"))
    row = gone.claim(Ready(REL, time.time(), Snapshot.of(path.stat()), format="application/pdf"))
    assert row is not None
    assert len(claim_of(row.work.name) or "") == 32  # 128 bits: unique beyond one clinic
    heir = Claimer(gone.inbox, Journal(tmp_path / "other.sqlite"), "heir", Masker(b"k"))
    heir.prepare()
    [taken] = heir.take_over("me")
    assert taken.work.parent.name == "heir"
    assert claim_key(taken.work) == claim_key(row.work)


def test_the_claim_is_read_from_either_naming_scheme() -> None:
    assert claim_of("0a1b2c-p_5F1_2Fscan_2Epdf") == "0a1b2c"
    assert claim_of("0A1B~p_1%2Fscan-2.pdf") == "0a1b"
    assert claim_of("not-a-claim") is None
