"""Commands on a fleet's shared journal (a real PostgreSQL, tests/pg.py): `check --online`
connects (a refused password is a clear error that never echoes it); `status` and `retry` from
one host see and act on what another host's instance did."""

from __future__ import annotations

import json

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.commands.test_retry import ingestd
from tests.conftest import Tree, make_config
from tests.pg import PASSWORD, PASSWORD_ROLE, Postgres
from tests.samples import pdf


def _host(tree: Tree, sandbox: Sandbox, url: str, n: int, **journal: str) -> str:
    return str(
        make_config(
            tree,
            sandbox,
            file_name=f"host-{n}.yaml",
            paths={"state": str(tree.root / f"state-{n}" / "journal.sqlite")},
            journal={"url": url, **journal},
        )
    )


def test_check_online_connects_and_a_refused_password_is_a_clear_error(
    tree: Tree, sandbox: Sandbox, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.url("postgres", tcp=True, user=PASSWORD_ROLE)
    config = _host(tree, sandbox, url, 1, password="${TEST_PG_PASSWORD}")
    monkeypatch.setenv("TEST_PG_PASSWORD", PASSWORD)
    good = ingestd("check", "--online", "-c", config)
    assert good.returncode == 0, good.stderr
    assert (
        f"journal: connected to {PASSWORD_ROLE}@127.0.0.1:{postgres.port}/postgres" in good.stdout
    )
    assert ingestd("check", "-c", config).returncode == 0  # offline: no connection tried

    monkeypatch.setenv("TEST_PG_PASSWORD", "Not-the-Pa55word")
    refused = ingestd("check", "--online", "-c", config)
    assert refused.returncode == 2
    assert "cannot open journal" in refused.stderr
    assert "password authentication failed" in refused.stderr
    assert "Not-the-Pa55word" not in refused.stderr + refused.stdout
    started = ingestd("once", "-c", config)  # start-up fails the same way
    assert started.returncode == 2
    assert "password authentication failed" in started.stderr
    assert "Not-the-Pa55word" not in started.stderr + started.stdout

    # A server not up (yet) is no config error: exit 1, which systemd restarts after 5 s.
    down = _host(tree, sandbox, "postgresql://ingestd@127.0.0.1:1/ingestd", 2)
    unreachable = ingestd("once", "-c", down)
    assert unreachable.returncode == 1
    assert "cannot open journal ingestd@127.0.0.1:1/ingestd" in unreachable.stderr


def test_status_and_retry_on_one_host_see_what_another_host_did(
    tree: Tree, sandbox: Sandbox, postgres: Postgres, pg_db: str
) -> None:
    url = postgres.url(pg_db)
    first, second = _host(tree, sandbox, url, 1), _host(tree, sandbox, url, 2)
    tree.drop("p_1/refused.pdf", pdf("refused"))
    sandbox.add_fault(Fault(api="leyr", route="upload", status=422, times=1))
    assert ingestd("once", "-c", first).returncode == 1
    [failed] = tree.receipts("failed")

    status = json.loads(ingestd("status", "--json", "-c", second).stdout)
    assert status["files"]["failed"] == 1
    [failure] = status["recent_failures"]
    assert failure["instance"] == (tree.root / "state-1" / "instance.id").read_text().strip()

    back = ingestd("retry", "-c", second, str(tree.failed / "p_1" / "refused.pdf"))
    assert back.returncode == 0, back.stderr
    assert ingestd("once", "-c", second).returncode == 0
    [done] = tree.receipts("done")
    assert done["history"] == [failed]
    status = json.loads(ingestd("status", "--json", "-c", first).stdout)
    assert (status["files"]["done"], status["files"]["failed"]) == (1, 1)
    assert status["fleet"] == []  # both left the fleet at their clean stop
