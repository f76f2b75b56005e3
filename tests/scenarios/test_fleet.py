"""A fleet: three `ingestd run` instances on one inbox with one PostgreSQL as their shared
journal (tests/pg.py), the sandbox EHR on loopback. 500 files while instances are killed with
SIGKILL at random and PostgreSQL restarts once: every file is uploaded exactly once, every
receipt's document is in the EHR, and the dead instances' files are taken over."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.filing.receipts import read_receipt
from ingestd.sandbox import Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.pg import Postgres
from tests.samples import pdf

pytestmark = pytest.mark.slow

FILES = 500
LEASE = 2.0  # seconds without a heartbeat (by the database's clock) before a takeover


@pytest.fixture
def ehr() -> Iterator[Sandbox]:
    sb = Sandbox(port=0, latency_seconds=0.01).start()
    try:
        yield sb
    finally:
        sb.stop()


def _config(tree: Tree, sandbox: Sandbox, url: str, n: int) -> Path:
    return make_config(
        tree,
        sandbox,
        settle=0.1,
        file_name=f"ingestd-{n}.yaml",
        paths={"state": str(tree.root / f"state-{n}" / "journal.sqlite")},
        watch={"claim_lease_seconds": LEASE, "scan_interval_seconds": 2},
        journal={"url": url},
    )


def test_three_instances_lose_nothing_and_send_nothing_twice_through_kills_and_a_restart(
    tree: Tree,
    ehr: Sandbox,
    postgres: Postgres,
    pg_db: str,
    daemon_process: Callable[..., DaemonProcess],
) -> None:
    chance = random.Random(time.time_ns())
    seed = chance.randrange(10**6)
    chance.seed(seed)
    configs = [_config(tree, ehr, postgres.url(pg_db), n) for n in range(3)]
    fleet = [daemon_process(config) for config in configs]
    for proc in fleet:
        proc.wait_started()
    files = {f"p_{n % 25}/fleet-{n}.pdf": pdf(f"fleet-{n}", 2_000) for n in range(FILES)}
    for rel, data in files.items():
        tree.drop(rel, data)

    def done() -> int:
        return len(list(tree.done.rglob("*.receipt.json")))

    alive = [True, True, True]  # False: killed for good

    def revive() -> None:
        """As systemd's Restart=on-failure: an instance that exited with 1 (started while the
        database was away: a kill just before its restart) is started again."""
        for n, proc in enumerate(fleet):
            if alive[n] and proc.proc.poll() == 1:
                fleet[n] = daemon_process(configs[n])

    def done_reviving(mark: int) -> bool:
        revive()
        return done() >= mark

    # Kills at random points while the work goes on; one instance stays dead until the end (its
    # claims are the survivors' to take over), the others come back under their old identity.
    kills = sorted(chance.sample(range(40, 400), 3))
    restart_at = chance.randrange(150, 350)
    for mark in sorted([*kills, restart_at]):
        wait_for(lambda mark=mark: done_reviving(mark), timeout=60)
        if mark == restart_at:
            postgres.stop()
            time.sleep(chance.uniform(0.5, 2.0))  # an outage of some length, by design
            postgres.start()
            continue
        victim = chance.randrange(3)
        fleet[victim].kill()
        if mark != kills[-1]:
            fleet[victim] = daemon_process(configs[victim])
        else:
            alive[victim] = False
    wait_for(lambda: done_reviving(FILES) and done() == FILES, timeout=90)
    for proc in fleet:
        proc.stop()

    receipts = tree.receipts("done")
    assert tree.receipts("failed") == [], f"seed {seed}"
    per_source = collections.Counter(r["source"] for r in receipts)
    assert set(per_source) == set(files), f"seed {seed}"
    assert max(per_source.values()) == 1, f"seed {seed}"
    stored = {d.id: d.sha256 for d in ehr.documents()}
    assert len(stored) == FILES, f"seed {seed}: {len(stored) - FILES} duplicates"
    assert len(collections.Counter(stored.values())) == FILES, f"seed {seed}"
    assert all(stored[r["document_id"]] == r["sha256"] for r in receipts), f"seed {seed}"
    assert not list(tree.inbox.rglob("*.pdf")), f"seed {seed}"
    # Every filed file beside its receipt, and every receipt beside its file.
    filed = {p.relative_to(tree.done) for p in tree.done.rglob("*.pdf")}
    described = {
        p.relative_to(tree.done).with_name(r["file"])
        for p in tree.done.rglob("*.receipt.json")
        for r in [read_receipt(p)]
    }
    assert filed == described, f"seed {seed}"
