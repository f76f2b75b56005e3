"""EHR outages and refused credentials: nothing moves to failed/, the target is probed rather
than hammered, and the backlog drains when it answers again."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

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
    assert result.returncode == 1 and "waiting 1" in result.stdout
    assert time.monotonic() - started < 90
    assert tree.receipts("failed") == []  # waiting, not failed
