"""kill -9 in the middle of a batch, then a restart: every file ends up exactly once in done/ or
failed/, and nothing is uploaded twice."""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Iterator

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_sandbox() -> Iterator[Sandbox]:
    # Latency per upload makes a kill land mid-upload rather than between files.
    sb = Sandbox(port=0, latency_seconds=0.03).start()
    try:
        yield sb
    finally:
        sb.stop()


def _assert_each_file_exactly_once(
    tree: Tree, sandbox: Sandbox, contents: dict[str, bytes]
) -> None:
    receipts = tree.all_receipts()
    sources = collections.Counter(r["source"] for r in receipts)
    assert set(sources) == set(contents)
    assert max(sources.values()) == 1, "a file was filed twice"
    stored = sandbox.documents()
    by_id = {d.id: d for d in stored}
    hashes = collections.Counter(d.sha256 for d in stored)
    assert max(hashes.values()) == 1, "the EHR holds a duplicate"
    for receipt in receipts:
        assert receipt["status"] == "done", receipt.get("error")
        assert by_id[receipt["document_id"]].sha256 == receipt["sha256"]
    assert len(stored) == len(contents)
    leftovers = [p for p in tree.inbox.rglob("*") if p.is_file() and ".ingestd" not in p.parts]
    assert leftovers == []


def test_kill_9_five_times_mid_batch_then_restart(
    tree: Tree, slow_sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    contents = {}
    for n in range(300):
        rel = f"p_{n % 20}/doc-{n}.pdf"
        contents[rel] = pdf(f"crash-{n}", 2_000)
        tree.drop(rel, contents[rel])
    config = make_config(tree, slow_sandbox, settle=0.1)
    rng = random.Random()
    stored = 0
    for _kill in range(5):
        # Some uploads are stored but never answered: only asking the EHR avoids a duplicate.
        slow_sandbox.add_fault(Fault(api="leyr", route="upload", action="commit_drop", times=2))
        proc = daemon_process(config)
        stored += rng.randrange(15, 45)
        wait_for(lambda at=stored: len(slow_sandbox.documents()) >= at, timeout=60)
        proc.kill()
    slow_sandbox.clear_faults()
    proc = daemon_process(config)
    wait_for(lambda: len(tree.all_receipts()) == 300, timeout=120)
    assert proc.stop() == 0
    _assert_each_file_exactly_once(tree, slow_sandbox, contents)
