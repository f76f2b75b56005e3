"""Periodic verification in the daemon: a random sample of done/ receipts read back from the
sandbox each round, outcomes in the daemon's metrics, and the rounds' own thread."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ingestd.config.load import load_config
from ingestd.config.model import Config, VerifySchedule
from ingestd.daemon.verify import PeriodicVerify
from ingestd.journal import Journal
from ingestd.observe.logs import Masker
from ingestd.observe.metrics import Metrics
from ingestd.sandbox import Sandbox
from tests.conftest import Tree, make_config, wait_for
from tests.samples import pdf


@pytest.fixture
def config(tree: Tree, sandbox: Sandbox) -> Config:
    """Four files uploaded by `ingestd once`; the config, verifying every receipt each day."""
    path = make_config(tree, sandbox, verify={"every": "24h", "sample": "100%"})
    for n in range(4):
        tree.drop(f"abc_{n}/scan{n}.pdf", pdf(f"scan {n}"))
    result = subprocess.run(
        [sys.executable, "-m", "ingestd", "once", "-c", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return load_config(str(path))


@pytest.fixture
def journal(tree: Tree) -> Iterator[Journal]:
    j = Journal(tree.state)
    yield j
    j.close()


def count(metrics: Metrics, outcome: str) -> float:
    found = metrics.registry.get_sample_value(
        "ingestd_verify_total", {"target": "leyr", "outcome": outcome}
    )
    return found or 0.0


def test_a_round_checks_the_sample_again_and_reports_a_deleted_document(
    tree: Tree, sandbox: Sandbox, config: Config, journal: Journal,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    metrics = Metrics()
    periodic = PeriodicVerify(
        lambda: config, journal, Masker(b"k" * 32), metrics, threading.Event()
    )
    assert {r.outcome for r in periodic.round()} == {"ok"}
    receipt = json.loads((tree.done / "abc_2" / "scan2.pdf.receipt.json").read_text())
    sandbox.delete_document(receipt["document_id"])
    caplog.set_level(logging.INFO, "ingestd")
    results = periodic.round()  # checked again, not skipped: the EHR may change any day
    assert sorted(r.outcome for r in results) == ["missing", "ok", "ok", "ok"]
    assert count(metrics, "ok") == 7
    assert count(metrics, "missing") == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("event=verify_failed" in m for m in messages)
    assert any("event=verify_round" in m and "bad=1" in m for m in messages)
    assert not any("abc_2" in m or "scan2" in m for m in messages)

    one_percent = dataclasses.replace(config, verify=VerifySchedule(86400, 0.01))
    assert len(PeriodicVerify(lambda: one_percent, journal, Masker(b"k" * 32), metrics,
                              threading.Event()).round()) == 1  # fmt: skip


def test_rounds_run_on_their_own_thread_until_the_daemon_stops(
    config: Config, journal: Journal
) -> None:
    often = dataclasses.replace(config, verify=VerifySchedule(0.05, 1.0))
    metrics, stopping = Metrics(), threading.Event()
    periodic = PeriodicVerify(lambda: often, journal, Masker(b"k" * 32), metrics, stopping)
    periodic.start()
    wait_for(lambda: count(metrics, "ok") >= 8)  # two rounds at least
    stopping.set()
    assert periodic._thread is not None
    periodic._thread.join(10)
    assert not periodic._thread.is_alive()

    never = PeriodicVerify(lambda: dataclasses.replace(config, verify=None), journal,
                           Masker(b"k" * 32), Metrics(), threading.Event())  # fmt: skip
    never.start()
    assert never._thread is None
