"""The status page as the daemon runs it: a reload changes the password at once, while a new
address needs a restart (logged once) and the page keeps what it was serving with."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from ingestd.config.model import Config, Paths
from ingestd.config.statuspage import StatusPageConfig
from ingestd.daemon.statuspage import StatusPage, start_status_page
from ingestd.journal import Journal
from ingestd.observe.logs import Masker
from ingestd.observe.metrics import DaemonState
from ingestd.web.auth import hash_password
from tests.conftest import Tree

OLD, NEW = "the old password", "the new password"


@pytest.fixture
def daemon(tree: Tree) -> Iterator[Any]:
    journal = Journal(tree.state)
    paths = Paths(tree.inbox, tree.done, tree.failed, tree.state)
    page = StatusPageConfig(("127.0.0.1", 0), "desk", hash_password(OLD, n=2**10))
    state = DaemonState({}, 0.0, None, {}, True)
    yield SimpleNamespace(
        config=Config(file="c.yaml", paths=paths, targets={}, status_page=page),
        journal=journal,
        masker=Masker(b"k" * 32),
        snapshot=lambda: state,
    )
    journal.close()


@pytest.fixture
def started(daemon: Any) -> Iterator[StatusPage]:
    page = start_status_page(daemon)
    assert page is not None
    yield page
    page.stop()


def status(page: StatusPage, password: str) -> int:
    url = f"http://127.0.0.1:{page.server.port}/"
    return requests.get(url, auth=("desk", password), timeout=10).status_code


def reload(daemon: Any, **changes: Any) -> None:
    page = dataclasses.replace(daemon.config.status_page, **changes)
    daemon.config = dataclasses.replace(daemon.config, status_page=page)


def test_a_reloaded_password_applies_to_the_next_request(daemon: Any, started: StatusPage) -> None:
    assert status(started, OLD) == 200
    reload(daemon, password=hash_password(NEW, n=2**10))
    assert status(started, OLD) == 401
    assert status(started, NEW) == 200


def test_a_new_address_needs_a_restart_and_the_page_keeps_its_password(
    daemon: Any, started: StatusPage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd")
    reload(daemon, password=hash_password(NEW, n=2**10))
    assert status(started, NEW) == 200
    # Moved to another address without a password (fine there: loopback) -> not applied here.
    reload(daemon, listen=("127.0.0.2", 8081), password=None)
    assert status(started, "") == 401
    assert status(started, NEW) == 200
    assert status(started, NEW) == 200
    assert caplog.text.count('event=status_page_needs_restart why="listen changed"') == 1


def test_no_status_page_configured_starts_nothing(daemon: Any) -> None:
    daemon.config = dataclasses.replace(daemon.config, status_page=None)
    assert start_status_page(daemon) is None
