"""Conversion to PDF through the real daemon and the sandbox EHR: a fax TIFF reaches Leyr as a
PDF that opens and holds its pages, exactly once, also across kill -9 between conversion and
upload and between upload and receipt; a corrupt TIFF goes to failed/ unsent."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from ingestd.config.load import load_config
from ingestd.content import Snapshot
from ingestd.daemon.loop import Daemon
from ingestd.delivery.topdf import convert
from ingestd.inbox.settle import Ready
from ingestd.journal import ClaimLost, Row
from ingestd.sandbox import Fault, Sandbox
from tests import images
from tests.conftest import DaemonProcess, Tree, make_config, wait_for

pytestmark = pytest.mark.slow
pypdf = pytest.importorskip(
    "pypdf", minversion="4", reason="pypdf (a test extra) opens the PDFs the EHR got"
)


def _config(tree: Tree, sandbox: Sandbox) -> Path:
    path = make_config(tree, sandbox, settle=0.1)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["targets"]["leyr"]["convert_to_pdf"] = ["image/tiff", "image/jpeg"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _pdf_of(data: bytes, tmp: Path) -> bytes:
    src = tmp / "expected.src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        out = io.BytesIO()
        convert(fd, len(data), out)
    finally:
        os.close(fd)
    return out.getvalue()


def _converted(tree: Tree) -> list[Path]:
    return sorted((tree.state.parent / "converted").glob("*.pdf"))


def _assert_sent_once_as_pdf(tree: Tree, sandbox: Sandbox, fax: bytes, pages: int) -> None:
    [receipt] = tree.receipts("done")
    [stored] = sandbox.documents()
    assert stored.mime == "application/pdf"
    assert receipt["format"] == "application/pdf"
    assert receipt["sha256"] == stored.sha256 == hashlib.sha256(stored.content).hexdigest()
    assert receipt["size"] == stored.size
    assert stored.content == _pdf_of(fax, tree.root)  # deterministic: byte for byte
    assert receipt["source_format"] == "image/tiff"
    assert receipt["source_sha256"] == hashlib.sha256(fax).hexdigest()
    assert receipt["source_size"] == len(fax)
    assert receipt["pages"] == pages
    assert len(pypdf.PdfReader(io.BytesIO(stored.content)).pages) == pages
    kept = tree.done / "p_1" / "fax.tif"
    assert kept.read_bytes() == fax  # done/ keeps what the fax server wrote
    assert _converted(tree) == []  # the PDF made is removed once the file is done


def test_a_fax_reaches_leyr_as_a_pdf(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    fax = images.fax_tiff(pages=4)
    tree.drop("p_1/fax.tif", fax)
    proc = daemon_process(_config(tree, sandbox))
    wait_for(lambda: len(tree.receipts("done")) == 1, timeout=30)
    assert proc.stop() == 0
    _assert_sent_once_as_pdf(tree, sandbox, fax, pages=4)
    assert "event=file_converted" in proc.output()
    [stored] = sandbox.documents()
    assert stored.name == "fax" or stored.title == "fax"


def test_a_corrupt_tiff_fails_unsent(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    fax = images.fax_tiff(pages=2)
    tree.drop("p_1/fax.tif", fax[: len(fax) // 2])
    proc = daemon_process(_config(tree, sandbox))
    wait_for(lambda: len(tree.receipts("failed")) == 1, timeout=30)
    assert proc.stop() == 0
    [receipt] = tree.receipts("failed")
    assert receipt["error"]["kind"] == "conversion_failed"
    assert "ingestd retry" in receipt["error"]["message"]
    assert receipt["format"] == "image/tiff"
    assert "source_sha256" not in receipt
    assert receipt["attempts"] == 0
    assert sandbox.documents() == []
    assert (tree.failed / "p_1" / "fax.tif").read_bytes() == fax[: len(fax) // 2]
    assert _converted(tree) == []


def test_kill_9_between_conversion_and_upload(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    fax = images.fax_tiff(pages=3)
    # The upload hangs: the PDF is made and committed, its request not answered.
    sandbox.add_fault(Fault(api="leyr", route="upload", action="delay", delay_seconds=30))
    tree.drop("p_1/fax.tif", fax)
    config = _config(tree, sandbox)
    proc = daemon_process(config)
    wait_for(lambda: _converted(tree) != [], timeout=30)
    made = _converted(tree)[0].read_bytes()
    proc.kill()
    sandbox.clear_faults()
    proc = daemon_process(config)
    # Started (signal handlers in place) before it is stopped: the first daemon may have filed
    # the receipt itself before it was killed, and a SIGTERM during start-up ends a process.
    proc.wait_started()
    wait_for(lambda: len(tree.receipts("done")) == 1, timeout=90)
    assert proc.stop() == 0
    _assert_sent_once_as_pdf(tree, sandbox, fax, pages=3)
    assert sandbox.documents()[0].content == made


def test_kill_9_between_upload_and_receipt(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    fax = images.fax_tiff(pages=2)
    # Stored, never answered: the daemon cannot know, and is killed before it asks.
    sandbox.add_fault(Fault(api="leyr", route="upload", action="commit_drop", times=None))
    tree.drop("p_1/fax.tif", fax)
    config = _config(tree, sandbox)
    proc = daemon_process(config)
    wait_for(lambda: len(sandbox.documents()) == 1, timeout=30)
    proc.kill()
    # The converted PDF is lost with it: made again, byte-identical, and found in the EHR.
    for path in _converted(tree):
        path.unlink()
    sandbox.clear_faults()
    proc = daemon_process(config)
    # Started (signal handlers in place) before it is stopped: the first daemon may have filed
    # the receipt itself before it was killed, and a SIGTERM during start-up ends a process.
    proc.wait_started()
    wait_for(lambda: len(tree.receipts("done")) == 1, timeout=90)
    assert proc.stop() == 0
    _assert_sent_once_as_pdf(tree, sandbox, fax, pages=2)


def test_a_rule_forces_conversion_of_a_png_the_target_takes(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    # Leyr takes PNG and the target lists nothing: only the rule says convert.
    rules = [
        {
            "name": "photos as pdf",
            "match": {"format": ["image/png", "image/jpeg"]},
            "set": {"title": "{stem}", "type": "Photo", "target": "leyr", "convert": "pdf"},
        },
        {"name": "everything", "set": {"title": "{stem}", "type": "Scan", "target": "leyr"}},
    ]
    photo = images.png("RGBA")  # 8-bit alpha: kept as the PDF's soft mask
    tree.drop("p_1/wound.png", photo)
    tree.drop("p_1/letter.pdf", b"%PDF-1.4\n" + b"x" * 200 + b"\n%%EOF\n")
    proc = daemon_process(make_config(tree, sandbox, rules=rules, settle=0.1))
    wait_for(lambda: len(tree.receipts("done")) == 2, timeout=30)
    assert proc.stop() == 0
    receipts = {r["source"]: r for r in tree.receipts("done")}
    photo_receipt = receipts["p_1/wound.png"]
    assert photo_receipt["format"] == "application/pdf"
    assert photo_receipt["source_format"] == "image/png"
    assert photo_receipt["pages"] == 1
    assert "source_format" not in receipts["p_1/letter.pdf"]  # no rule converts it
    stored = {d.sha256: d for d in sandbox.documents()}
    assert stored[photo_receipt["sha256"]].mime == "application/pdf"
    assert stored[photo_receipt["sha256"]].content == _pdf_of(photo, tree.root)


def _claimed_and_converted(tree: Tree, sandbox: Sandbox) -> tuple[Daemon, Row]:
    """An in-process daemon with one claimed fax whose PDF is made and committed."""
    daemon = Daemon(load_config(str(_config(tree, sandbox))))
    tree.drop("p_1/fax.tif", images.fax_tiff(pages=1))
    path = tree.inbox / "p_1" / "fax.tif"
    size = path.stat().st_size
    ready = Ready(PurePosixPath("p_1/fax.tif"), time.time(), Snapshot.of(path.stat()))
    row = daemon.claimer.claim(ready)
    assert row is not None
    fd = os.open(tree.inbox / row.work, os.O_RDONLY)
    try:
        row, staged = daemon.pipeline.stager.prepare(row, fd, size, "image/tiff")
        os.close(staged.fd)
    finally:
        os.close(fd)
    assert _converted(tree) != []
    return daemon, row


def test_a_released_or_vanished_claim_leaves_no_pdf_behind(tree: Tree, sandbox: Sandbox) -> None:
    """A claimed fax given back to the inbox (it changed while read) is claimed again later
    under a new row; one whose work file vanished is forgotten: neither leaves its PDF (a
    document) in the state folder until the next start-up."""
    daemon, row = _claimed_and_converted(tree, sandbox)
    try:
        assert daemon.pipeline._changed(row).result == "released"
        assert (tree.inbox / "p_1" / "fax.tif").exists()
        assert _converted(tree) == []
    finally:
        daemon.journal.close()
    daemon, row = _claimed_and_converted(tree, sandbox)
    try:
        os.unlink(tree.inbox / row.work)
        assert daemon.pipeline.process(row).result == "gone"
        assert _converted(tree) == []
    finally:
        daemon.journal.close()


def test_a_claim_lost_to_a_survivor_leaves_no_pdf_behind(
    tree: Tree, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared journal's survivor took the row over (this instance was thought dead): it
    makes its own PDF; this instance's copy goes at once."""
    daemon, row = _claimed_and_converted(tree, sandbox)
    try:

        def taken_over(row: Row, **values: object) -> Row:
            raise ClaimLost

        monkeypatch.setattr(daemon.journal, "change", taken_over)
        monkeypatch.setattr(daemon.journal, "update", taken_over)
        with pytest.raises(ClaimLost):
            daemon.pipeline.process(row)
        assert _converted(tree) == []
    finally:
        daemon.journal.close()
