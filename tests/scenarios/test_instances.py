"""Several `ingestd run` instances on one inbox, each with its own journal: the claim by rename
decides, and claims of an instance that is gone are taken over without uploading twice."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow


def _config(tree: Tree, sandbox: Sandbox, n: int, **extra: object) -> Path:
    state = str(tree.root / f"state-{n}" / "journal.sqlite")
    return make_config(
        tree, sandbox, settle=0.1, file_name=f"ingestd-{n}.yaml", paths={"state": state}, **extra
    )


def _assert_exactly_once(tree: Tree, sandbox: Sandbox, files: dict[str, bytes]) -> None:
    receipts = tree.all_receipts()
    per_source = collections.Counter(r["source"] for r in receipts)
    assert set(per_source) == set(files)
    assert max(per_source.values()) == 1
    assert all(r["status"] == "done" for r in receipts)
    hashes = collections.Counter(d.sha256 for d in sandbox.documents())
    assert len(sandbox.documents()) == len(files)
    assert max(hashes.values()) == 1
    stored = {d.id: d.sha256 for d in sandbox.documents()}
    assert all(stored[r["document_id"]] == r["sha256"] for r in receipts)


@pytest.fixture
def latent_sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(port=0, latency_seconds=0.02).start()
    try:
        yield sb
    finally:
        sb.stop()


def test_two_instances_on_one_inbox_never_upload_a_file_twice(
    tree: Tree, latent_sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    first = daemon_process(_config(tree, latent_sandbox, 1))
    second = daemon_process(_config(tree, latent_sandbox, 2))
    first.wait_started()
    second.wait_started()
    files = {f"p_{n % 30}/shared-{n}.pdf": pdf(f"shared-{n}", 3_000) for n in range(300)}
    for rel, data in files.items():
        tree.drop(rel, data)
    wait_for(lambda: len(tree.all_receipts()) == 300, timeout=120)
    assert first.stop() == 0
    assert second.stop() == 0
    _assert_exactly_once(tree, latent_sandbox, files)
    # Both did a share of the work (the claim decides who; neither is locked out).
    assert "event=file_done" in first.output()
    assert "event=file_done" in second.output()


def test_claims_of_a_killed_instance_are_taken_over_after_its_lease(
    tree: Tree, daemon_process: Callable[..., DaemonProcess]
) -> None:
    slow = Sandbox(port=0, latency_seconds=0.5).start()
    try:
        files = {f"p_{n % 3}/lease-{n}.pdf": pdf(f"lease-{n}") for n in range(12)}
        for rel, data in files.items():
            tree.drop(rel, data)
        # The first upload is stored but never answered: only asking the EHR avoids a duplicate.
        slow.add_fault(Fault(api="leyr", route="upload", action="commit_drop", times=1))
        gone = daemon_process(_config(tree, slow, 1))
        work = tree.inbox / ".ingestd" / "work"
        wait_for(lambda: len(slow.documents()) >= 2)
        gone.kill()
        left_claimed = [p for p in work.rglob("*") if p.is_file() and p.name != ".lease"]
        assert left_claimed, "the killed instance should have left claimed files"
        taker = daemon_process(_config(tree, slow, 2, watch={"claim_lease_seconds": 1}))
        wait_for(lambda: len(tree.all_receipts()) == 12, timeout=60)
        assert "event=claims_taken_over" in taker.output()
        assert taker.stop() == 0
        _assert_exactly_once(tree, slow, files)
    finally:
        slow.stop()
