"""Fixtures for the sandbox tests: one sandbox per test module, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingestd.sandbox import Sandbox


@pytest.fixture(scope="module")
def server() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def sb(server: Sandbox) -> Sandbox:
    server.reset()
    return server
