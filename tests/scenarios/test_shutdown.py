"""SIGTERM: in-flight uploads finish, the rest is parked and completes after a restart."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from ingestd.config.load import load_config
from ingestd.daemon import loop as daemon_module
from ingestd.daemon.loop import Daemon, Summary
from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow


def _journal_states(tree: Tree) -> list[str]:
    with sqlite3.connect(tree.state) as db:
        return [state for (state,) in db.execute("SELECT state FROM files")]


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
    # A restarted daemon asks the EHR before re-sending a file it had sent (the journal's
    # last word may not have survived a power cut), and waits until that send must be over:
    # sent_at plus the upload timeout, about 20 s here. So the wait is longer than that.
    wait_for(lambda: tree.receipts(), timeout=60)
    [receipt] = tree.receipts()
    assert receipt["status"] == "done"
    assert receipt["attempts"] >= 2
    assert len(sandbox.documents()) == 1
    assert proc.stop() == 0


def test_a_second_sigterm_stops_at_once_and_a_restart_completes_the_file(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    # The EHR takes 8 s to store the upload: stopping at once leaves its outcome unknown, and
    # the restart must not send it again while the EHR is still storing the first one.
    sandbox.add_fault(Fault(api="leyr", route="upload", action="delay", delay_seconds=8.0))
    config = make_config(tree, sandbox)
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("p_1/impatient.pdf", pdf("impatient"))
    wait_for(lambda: _journal_states(tree) == ["uploading"])
    first_stored_by = time.monotonic() + 8.0  # when the EHR will have stored the first send
    proc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "event=stopping" in proc.output())  # finishing in-flight work...
    proc.proc.send_signal(signal.SIGTERM)  # ... but the admin will not wait
    assert proc.proc.wait(5) == 0  # did not wait for the EHR's answer
    proc = daemon_process(config)
    wait_for(lambda: tree.receipts(), timeout=60)
    # Every upload sent so far has been answered by now (the delay applied to the first).
    wait_for(lambda: time.monotonic() > first_stored_by + 1.0, timeout=15)
    assert _upload_requests(sandbox) == 1
    [receipt] = tree.receipts()
    assert receipt["status"] == "done"
    assert [d.id for d in sandbox.documents()] == [receipt["document_id"]]  # not sent twice
    assert "orphan" not in proc.output()
    assert proc.stop() == 0


def test_the_stop_line_counts_each_parked_file_once(
    tree: Tree, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11, item 9: files still in flight when the grace ends are parked in the journal,
    and counted once in `event=stopped ... waiting=`."""
    monkeypatch.setattr(daemon_module, "SHUTDOWN_GRACE_SECONDS", 0.5)
    sandbox.add_fault(
        Fault(api="leyr", route="upload", action="delay", delay_seconds=3.0, times=None)
    )
    daemon = Daemon(load_config(str(make_config(tree, sandbox))))
    for n in range(3):
        tree.drop(f"p_{n}/parked-{n}.pdf", pdf(f"parked-{n}"))
    result: list[Summary] = []
    runner = threading.Thread(target=lambda: result.append(daemon.run()))
    caplog.set_level(logging.INFO)
    runner.start()
    try:
        wait_for(lambda: _journal_states(tree) == ["uploading"] * 3)
        daemon.request_stop()
        runner.join(20)
        [summary] = result
        assert (summary.done, summary.failed, summary.waiting) == (0, 0, 3)
        [stopped] = [r.getMessage() for r in caplog.records if "event=stopped" in r.getMessage()]
        assert "waiting=3" in stopped, stopped
    finally:
        daemon.workers.join(20)  # the parked sends end when the EHR answers
        daemon.journal.close()
    # Nothing lost or sent twice: each file was sent once and is done or waits in the journal.
    assert _upload_requests(sandbox) == 3
