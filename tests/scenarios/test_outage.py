"""EHR outages and refused credentials: nothing moves to failed/, the target is probed rather
than hammered, and the backlog drains when it answers again."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import PurePosixPath

import pytest

from ingestd.config.load import load_config
from ingestd.content import Snapshot
from ingestd.daemon.loop import Daemon
from ingestd.inbox.settle import Ready
from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 60.0


def _uploads(sandbox: Sandbox) -> int:
    return sum(1 for r in sandbox.requests() if r.route == "upload")


def test_a_60_second_outage_fails_nothing_and_everything_arrives_after_it(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    sandbox.add_fault(Fault(api="leyr", route="upload", status=503, times=None))
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    for n in range(30):
        tree.drop(f"p_{n % 5}/outage-{n}.pdf", pdf(f"outage-{n}"))
    ends = time.monotonic() + OUTAGE_SECONDS

    def outage_over_with_nothing_failed() -> bool:
        assert tree.all_receipts() == [], "an outage moved a file to failed/ or done/"
        return time.monotonic() >= ends

    wait_for(outage_over_with_nothing_failed, timeout=OUTAGE_SECONDS + 5, interval=0.5)
    during = _uploads(sandbox)
    # Probing, not hammering: far fewer requests than 30 files retrying on their own.
    assert during < 60, during
    sandbox.clear_faults()
    wait_for(lambda: len(tree.receipts()) == 30, timeout=40)
    assert tree.receipts("failed") == []
    assert len(sandbox.documents()) == 30
    output = proc.output()
    assert output.count("event=target_unavailable") == 1
    assert output.count("event=target_available") == 1
    assert proc.stop() == 0


def test_refused_credentials_pause_the_target_once_and_a_fixed_config_drains_it(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = make_config(tree, sandbox)
    good = config.read_text()
    config.write_text(good.replace("client_secret: ${TEST_LEYR_SECRET}", "client_secret: wrong"))
    proc = daemon_process(config)
    proc.wait_started()
    for n in range(10):
        tree.drop(f"p_1/cred-{n}.pdf", pdf(f"cred-{n}"))
    wait_for(lambda: "event=target_misconfigured" in proc.output())
    wait_for(lambda: sum(1 for r in sandbox.requests() if r.status == 401) >= 1)
    assert tree.all_receipts() == []
    config.write_text(good)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(tree.receipts()) == 10, timeout=30)
    assert proc.output().count("event=target_misconfigured") == 1  # once, not per file
    assert tree.receipts("failed") == []
    assert proc.stop() == 0


def test_once_sees_short_retries_through_and_gives_up_on_an_outage(
    tree: Tree, sandbox: Sandbox
) -> None:
    import subprocess
    import sys

    config = str(make_config(tree, sandbox))
    tree.drop("p_1/short.pdf", pdf("short"))
    # 503 for longer than one delivery's own retries: the target pauses, then comes back.
    sandbox.add_fault(Fault(api="leyr", route="upload", status=503, times=5))
    run = [sys.executable, "-m", "ingestd", "once", "-c", config]
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    assert [r["status"] for r in tree.receipts()] == ["done"]

    tree.drop("p_1/outage.pdf", pdf("outage"))
    sandbox.add_fault(Fault(api="leyr", route="upload", status=503, times=None))
    started = time.monotonic()
    result = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "waiting 1" in result.stdout
    assert time.monotonic() - started < 90
    assert tree.receipts("failed") == []  # waiting, not failed


def test_a_probe_that_only_looks_up_a_recent_send_lets_the_next_file_probe(
    tree: Tree, sandbox: Sandbox
) -> None:
    """The soak found this: after a restart during an outage, the file chosen to probe the
    paused target was one whose last send (before the kill) was seconds old, so it only asked
    the EHR and waited. It must not keep the probe: every other file of that target waited
    for a probe that never ended, for as long as the process ran."""
    daemon = Daemon(load_config(str(make_config(tree, sandbox))))
    try:
        health = daemon.fleet.health("leyr")
        path = tree.inbox / "p_1" / "recent.pdf"
        path.parent.mkdir()
        path.write_bytes(pdf("recent"))
        ready = Ready(PurePosixPath("p_1/recent.pdf"), time.time(), Snapshot.of(path.stat()))
        claimed = daemon.claimer.claim(ready)
        assert claimed is not None
        # Sent a second ago by the killed process; the EHR does not hold it (yet).
        row = daemon.journal.change(claimed, state="uploading", attempts=1, sent_at=time.time())
        sandbox.add_fault(Fault(api="leyr", route="list", status=503, times=None))
        health.failed(0.0, "HTTP 503")  # the outage paused the target ...
        health.paused_until = 0.0  # ... and its pause is over: the next file probes

        outcome = daemon.pipeline.process(row, resumed=True)

        assert outcome.result == "deferred"  # it waits for its earlier send to settle
        assert not health.probing  # and another file may probe meanwhile
        assert daemon.fleet.health("leyr").admit()[:2] == (True, True)
        assert [r.route for r in sandbox.requests()] == ["list"]  # asked; sent nothing
    finally:
        daemon.journal.close()


def test_a_backlog_made_due_at_once_drains_without_waiting_for_a_timer(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    """The soak found this: rows made due "now" (next attempt 0: the target answered again,
    a reload, a takeover) beyond the free workers were read as "nothing due for an hour", so
    the backlog drained a few files per 10 s lease tick instead of at once."""
    sandbox.add_fault(Fault(api="leyr", route="upload", status=503, times=None))
    config = make_config(tree, sandbox)
    text = config.read_text()
    # One upload at a time per target: 6 workers in all, far fewer than the files waiting.
    text = text.replace("kind: leyr\n", "kind: leyr\n    concurrency: 1\n")
    config.write_text(text.replace("kind: nymbl\n", "kind: nymbl\n    concurrency: 1\n"))
    proc = daemon_process(config)
    proc.wait_started()
    for n in range(24):
        tree.drop(f"p_{n % 4}/due-{n}.pdf", pdf(f"due-{n}"))

    def all_claimed_and_waiting() -> bool:
        with sqlite3.connect(tree.state) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM files WHERE state = 'claimed'").fetchone()
        return count == 24

    wait_for(all_claimed_and_waiting, timeout=60, interval=0.2)
    sandbox.clear_faults()
    wait_for(lambda: sandbox.documents(), timeout=30)  # the probe got through: all due now
    # 24 uploads of a few KB at one at a time take well under a second here; waiting for
    # lease ticks (6 files per 10 s) would take 30 s.
    wait_for(lambda: len(tree.receipts()) == 24, timeout=8)
    assert len(sandbox.documents()) == 24
    assert proc.stop() == 0


def _nymbl_uploads(sandbox: Sandbox) -> list[int]:
    return [r.status for r in sandbox.requests("nymbl") if r.route == "upload"]


def test_a_token_revoked_right_after_it_was_issued_gets_one_new_token_and_one_resend(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    """Issue 11, item 4: routine on the server's side, so not a misconfiguration."""
    sandbox.add_fault(Fault(api="token", route="token", action="revoke"))
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("12345/nymbl/revoked.pdf", pdf("revoked"))
    wait_for(lambda: tree.receipts())
    [receipt] = tree.receipts()
    assert receipt["status"] == "done"
    assert receipt["attempts"] == 2
    assert _nymbl_uploads(sandbox) == [401, 201]
    assert len(sandbox.requests("token")) == 2
    assert [d.id for d in sandbox.documents()] == [receipt["document_id"]]  # stored once
    assert "target_misconfigured" not in proc.output()
    assert proc.stop() == 0


def test_a_401_for_a_second_fresh_token_pauses_the_target_and_the_file_waits(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    sandbox.add_fault(Fault(api="nymbl", route="upload", status=401, times=None))
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("12345/nymbl/refused.pdf", pdf("refused"))
    wait_for(lambda: "event=target_misconfigured" in proc.output())
    assert proc.output().count("event=target_misconfigured") == 1
    # One fresh token refused, one more fetched and refused too: then it stops asking.
    assert _nymbl_uploads(sandbox) == [401, 401]
    assert len(sandbox.requests("token")) == 2
    assert proc.stop() == 0
    assert tree.all_receipts() == []
    assert sandbox.documents() == []
    with sqlite3.connect(tree.state) as db:
        [(state, attempts)] = db.execute("SELECT state, attempts FROM files").fetchall()
    assert state in ("claimed", "uploading")
    assert attempts == 2
