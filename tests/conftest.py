"""Shared fixtures: a temporary clinic tree, the sandbox EHR on loopback, a config writer, and
the daemon as a real process. Waiting is always polling for a condition with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)  # poll interval, bounded by the deadline above


@dataclass
class Tree:
    root: Path
    inbox: Path
    done: Path
    failed: Path
    state: Path

    def receipts(self, where: str = "done") -> list[dict[str, Any]]:
        base = self.done if where == "done" else self.failed
        return [json.loads(p.read_text()) for p in sorted(base.rglob("*.receipt.json"))]

    def all_receipts(self) -> list[dict[str, Any]]:
        return self.receipts("done") + self.receipts("failed")

    def drop(self, rel: str, data: bytes) -> Path:
        """Write a file the way a careful writer does: hidden temp name, then rename."""
        path = self.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".writing")
        tmp.write_bytes(data)
        os.rename(tmp, path)
        return path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "clinic"
    t = Tree(
        root, root / "inbox", root / "done", root / "failed", root / "state" / "journal.sqlite"
    )
    t.inbox.mkdir(parents=True)
    return t


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(port=0).start()
    try:
        yield sb
    finally:
        sb.stop()


DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "to nymbl",
        "match": {"path": "nymbl/**"},
        "set": {"title": "{stem}", "type": "Referral", "target": "nymbl"},
    },
    {"name": "everything", "set": {"title": "{stem}", "type": "Scan", "target": "leyr"}},
]


def make_config(
    tree: Tree,
    sandbox: Sandbox,
    rules: list[dict[str, Any]] | None = None,
    settle: float = 0.2,
    file_name: str = "ingestd.yaml",
    **extra: Any,
) -> Path:
    leyr = SANDBOX_CREDENTIALS["leyr"]
    nymbl = SANDBOX_CREDENTIALS["nymbl"]
    data: dict[str, Any] = {
        "paths": {
            "inbox": str(tree.inbox),
            "done": str(tree.done),
            "failed": str(tree.failed),
            "state": str(tree.state),
        },
        "targets": {
            "leyr": {
                "kind": "leyr",
                "base_url": sandbox.leyr_base_url,
                "emr": leyr["emr"],
                "care_unit_id": leyr["care_unit_id"],
                "client_id": leyr["client_id"],
                "client_secret": "${TEST_LEYR_SECRET}",
            },
            "nymbl": {
                "kind": "nymbl",
                "base_url": sandbox.nymbl_base_url,
                "token_url": sandbox.nymbl_token_url,
                "api_key": "${TEST_NYMBL_KEY}",
                "client_id": nymbl["client_id"],
                "client_secret": "${TEST_NYMBL_SECRET}",
            },
        },
        "watch": {"settle_seconds": settle, "scan_interval_seconds": 5},
        "rules": rules if rules is not None else DEFAULT_RULES,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tree.root / file_name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LEYR_SECRET", SANDBOX_CREDENTIALS["leyr"]["client_secret"])
    monkeypatch.setenv("TEST_NYMBL_KEY", SANDBOX_CREDENTIALS["nymbl"]["api_key"])
    monkeypatch.setenv("TEST_NYMBL_SECRET", SANDBOX_CREDENTIALS["nymbl"]["client_secret"])


class DaemonProcess:
    """`ingestd run` as a real child process; its stderr goes to a file the test can read."""

    def __init__(self, config: Path, log: Path, command: str = "run") -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingestd", command, "-c", str(config)],
            stdout=self._log_file,
            stderr=self._log_file,
            env=dict(os.environ),
        )

    def wait_started(self, timeout: float = 20.0) -> None:
        wait_for(lambda: b"event=started" in self.log.read_bytes(), timeout)

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace")


@pytest.fixture
def daemon_process(tree: Tree) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path, command: str = "run") -> DaemonProcess:
        proc = DaemonProcess(config, tree.root / f"daemon-{len(started)}.log", command)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()


# The shared journal's real PostgreSQL (tests/pg.py): `postgres` (the session's cluster), `pg_db`.
from tests.pg import pg_db, postgres  # noqa: E402, F401


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes with any constructor arguments; all are stopped after the test."""
    started: list[Sandbox] = []

    def start(**kwargs: Any) -> Sandbox:
        sb = Sandbox(port=0, **kwargs).start()
        started.append(sb)
        return sb

    yield start
    for sb in started:
        sb.stop()
