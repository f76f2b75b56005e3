"""Running as a service: the systemd notify protocol, metrics and health, and `ingestd status`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import gif, pdf

pytestmark = pytest.mark.slow


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    try:
        yield sock
    finally:
        sock.close()


def _messages(sock: socket.socket, seen: list[str]) -> list[str]:
    """Everything received so far, one entry per datagram line."""
    while True:
        try:
            datagram = sock.recv(4096).decode()
        except TimeoutError:
            return seen
        seen.extend(datagram.splitlines())


def _keys(seen: list[str]) -> list[str]:
    return [line.split("=", 1)[0] for line in seen if not line.startswith(("STATUS", "MONO"))]


def test_notify_ready_watchdog_reloading_and_stopping_in_order(
    tree: Tree,
    sandbox: Sandbox,
    daemon_process: Callable[..., DaemonProcess],
    notify_socket: socket.socket,
) -> None:
    proc = daemon_process(make_config(tree, sandbox))
    seen: list[str] = []
    wait_for(lambda: _keys(_messages(notify_socket, seen)).count("WATCHDOG") >= 2)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _keys(_messages(notify_socket, seen)).count("READY") >= 2)
    assert proc.stop() == 0
    _messages(notify_socket, seen)
    keys = _keys(seen)
    assert keys[0] == "READY"
    reloading = keys.index("RELOADING")
    assert "WATCHDOG" in keys[1:reloading]
    assert keys[reloading + 1] == "READY"
    assert keys[-1] == "STOPPING"
    assert any(line.startswith("MONOTONIC_USEC=") for line in seen)
    assert any(line.startswith("STATUS=") for line in seen)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _counter(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text, whatever the order of its labels."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == labels:
            return float(found.group(2))
    return 0.0


def test_metrics_move_and_healthz_turns_503_when_the_observer_dies(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = make_config(tree, sandbox, metrics={"listen": "127.0.0.1:0"})
    proc = daemon_process(config)
    address = wait_for(lambda: re.search(r"metrics_listening address=(\S+)", proc.output()))
    base = f"http://{address.group(1)}"
    wait_for(lambda: _get(base + "/healthz")[0] == 200)
    sandbox.add_fault(Fault(api="leyr", route="upload", status=503, times=1))
    for n in range(3):
        tree.drop(f"p_1/m-{n}.pdf", pdf(f"m-{n}"))
    wait_for(lambda: len(tree.receipts()) == 3)
    # The journal says `done` just after the receipt is written: wait for the gauge.
    wait_for(lambda: _counter(_get(base + "/metrics")[1], "ingestd_files", state="done") == 3)
    _, text = _get(base + "/metrics")
    assert _counter(text, "ingestd_uploads_total", target="leyr", outcome="done") == 3
    assert _counter(text, "ingestd_upload_retries_total", target="leyr") == 1
    assert _counter(text, "ingestd_upload_bytes_total", target="leyr") > 0
    assert _counter(text, "ingestd_files", state="done") == 3
    assert _counter(text, "ingestd_target_up", target="leyr") == 1
    assert "ingestd_upload_seconds_bucket" in text
    assert "p_1" not in text
    tree.drop("p_1/m-3.pdf", pdf("m-3"))
    wait_for(lambda: len(tree.receipts()) == 4)
    wait_for(lambda: _counter(_get(base + "/metrics")[1], "ingestd_files", state="done") == 4)
    _, later = _get(base + "/metrics")
    assert _counter(later, "ingestd_uploads_total", target="leyr", outcome="done") == 4

    shutil.rmtree(tree.inbox)  # the share goes away: the observer's watch dies with it
    # First the observer may be found dead; then the inbox itself is paused (one path for a
    # share unmounted and one that dies).
    status, body = wait_for(
        lambda: "not answering" in (s := _get(base + "/healthz"))[1] and s, timeout=30
    )
    assert status == 503
    assert "the inbox is not answering" in body
    assert "\ningestd_inbox_up 0.0\n" in _get(base + "/metrics")[1]
    tree.inbox.mkdir()
    wait_for(lambda: _get(base + "/healthz")[0] == 200, timeout=30)  # supervised: restarted
    assert "\ningestd_inbox_up 1.0\n" in _get(base + "/metrics")[1]
    tree.drop("p_1/after.pdf", pdf("after the inbox came back"))
    wait_for(lambda: len(tree.receipts()) == 5, timeout=30)
    assert proc.stop() == 0


def test_status_counts_targets_and_failures_without_patient_data(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = make_config(tree, sandbox)
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("p_4711/ok.pdf", pdf("ok"))
    tree.drop("p_4711/Andersson.gif", gif("bad"))
    wait_for(lambda: len(tree.all_receipts()) == 2)
    result = subprocess.run(
        [sys.executable, "-m", "ingestd", "status", "-c", str(config), "--json"],
        capture_output=True, text=True, timeout=30, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["daemon"] == "running"
    assert status["healthy"] is True
    assert status["files"]["done"] == 1
    assert status["files"]["failed"] == 1
    assert status["targets"]["leyr"]["up"] is True
    [failure] = status["recent_failures"]
    assert failure["kind"] == "unsupported_type"
    text = subprocess.run(
        [sys.executable, "-m", "ingestd", "status", "-c", str(config)],
        capture_output=True, text=True, timeout=30, env=dict(os.environ),
    ).stdout  # fmt: skip
    assert "1 done, 1 failed" in text
    assert "target leyr: up" in text
    for printed in (result.stdout, text):
        assert "p_4711" not in printed
        assert "Andersson" not in printed
    assert proc.stop() == 0
