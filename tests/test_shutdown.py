"""SIGTERM: in-flight uploads finish, the rest is parked and completes after a restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow


def _upload_requests(sandbox: Sandbox) -> int:
    return sum(1 for r in sandbox.requests() if r.route == "upload")


def test_sigterm_lets_an_in_flight_upload_finish_and_exits_0(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    sandbox.add_fault(Fault(api="leyr", route="upload", action="delay", delay_seconds=2.0))
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("p_1/slow-ehr.pdf", pdf("slow-ehr"))
    wait_for(lambda: _upload_requests(sandbox) == 1)
    assert proc.stop() == 0
    [receipt] = tree.receipts()
    assert receipt["status"] == "done"
    assert [d.id for d in sandbox.documents()] == [receipt["document_id"]]


def test_sigterm_during_backoff_parks_the_file_and_a_restart_completes_it(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    sandbox.add_fault(Fault(api="leyr", route="upload", action="status", status=503, times=None))
    config = make_config(tree, sandbox)
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("p_1/parked.pdf", pdf("parked"))
    wait_for(lambda: _upload_requests(sandbox) >= 1)
    assert proc.stop() == 0
    assert tree.all_receipts() == []  # an outage never sends a file to failed/
    assert not (tree.inbox / "p_1" / "parked.pdf").exists()  # parked in the work folder
    sandbox.clear_faults()
    proc = daemon_process(config)
    wait_for(lambda: tree.receipts())
    [receipt] = tree.receipts()
    assert receipt["status"] == "done" and receipt["attempts"] >= 2
    assert len(sandbox.documents()) == 1
    assert proc.stop() == 0
