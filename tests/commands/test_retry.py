"""`ingestd retry`: failed files back in line; the earlier receipt travels in `history`."""

from __future__ import annotations

import subprocess
import sys

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import Tree, make_config
from tests.samples import pdf


def ingestd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args], capture_output=True, text=True, timeout=60
    )


def test_a_refused_file_retried_after_the_fix_is_done_with_its_history(
    tree: Tree, sandbox: Sandbox
) -> None:
    config = str(make_config(tree, sandbox))
    data = pdf("retry-me")
    tree.drop("p_1/refused.pdf", data)
    tree.drop("p_2/also.pdf", pdf("also"))
    sandbox.add_fault(Fault(api="leyr", route="upload", status=422, times=2))
    assert ingestd("once", "-c", config).returncode == 1
    assert {r["source"] for r in tree.receipts("failed")} == {"p_1/refused.pdf", "p_2/also.pdf"}
    [first] = [r for r in tree.receipts("failed") if r["source"] == "p_1/refused.pdf"]

    usage = ingestd("retry", "-c", config)
    assert usage.returncode == 2
    assert "--all" in usage.stderr
    result = ingestd("retry", "-c", config, str(tree.failed / "p_1" / "refused.pdf"))
    assert result.returncode == 0, result.stderr
    assert "1 file(s) back" in result.stdout
    assert (tree.inbox / "p_1" / "refused.pdf").read_bytes() == data
    assert not (tree.failed / "p_1" / "refused.pdf").exists()
    assert not (tree.failed / "p_1" / "refused.pdf.receipt.json").exists()

    assert ingestd("once", "-c", config).returncode == 0
    [done] = tree.receipts("done")
    assert done["source"] == "p_1/refused.pdf"
    assert done["status"] == "done"
    assert done["history"] == [first]

    assert ingestd("retry", "-c", config, "--patient", "p_2").returncode == 0
    assert ingestd("once", "-c", config).returncode == 0
    assert tree.receipts("failed") == []
    assert len(tree.receipts("done")) == 2


def test_retry_refuses_paths_that_are_not_failed_files(tree: Tree, sandbox: Sandbox) -> None:
    config = str(make_config(tree, sandbox))
    tree.failed.mkdir(parents=True)
    stray = tree.root / "elsewhere.pdf"
    stray.write_bytes(pdf("x"))
    result = ingestd("retry", "-c", config, str(stray))
    assert result.returncode == 2
    assert "not a failed file" in result.stderr
    assert stray.exists()
