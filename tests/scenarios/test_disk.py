"""done/ or failed/ that cannot take a file: the file stays claimed (already uploaded, never
uploaded again), the trouble is logged once, and filing completes when the folder works."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ingestd.sandbox import Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow


def test_an_unusable_done_folder_keeps_files_claimed_until_it_works(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    tree.done.mkdir(parents=True)
    blocker = tree.done / "p_1"
    blocker.write_bytes(b"a file where the patient folder should be")
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("p_1/a.pdf", pdf("a"))
    tree.drop("p_1/b.pdf", pdf("b"))
    tree.drop("p_2/c.pdf", pdf("c"))
    wait_for(lambda: [r["source"] for r in tree.receipts()] == ["p_2/c.pdf"])
    wait_for(lambda: len(sandbox.documents()) == 3)
    wait_for(lambda: "event=filing_failed" in proc.output())
    assert not (tree.inbox / "p_1" / "a.pdf").exists()  # claimed, waiting, not lost
    blocker.unlink()
    wait_for(lambda: len(tree.receipts()) == 3, timeout=30)
    output = proc.output()
    assert output.count("event=filing_failed") == 1  # once, not per file or per try
    assert "event=filing_recovered" in output
    assert len(sandbox.documents()) == 3  # filed, never uploaded again
    assert {d.id for d in sandbox.documents()} == {r["document_id"] for r in tree.receipts()}
    assert proc.stop() == 0
