"""`journal:` in the config: the shared journal's URL and password, every mistake as
FILE:LINE:COL, the password never echoed, and a clear error when psycopg is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ingestd.config.load import load_config
from ingestd.journal import SharedJournal
from tests.config.test_load import ENV, GOOD, SECRET, problems, write


def test_a_shared_journal_is_its_url_and_the_resolved_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the `test` extra has it)")
    text = GOOD + "journal:\n  url: postgresql://ingestd@db:5432/ingestd?sslmode=verify-full\n"
    config = load_config(write(tmp_path, text + "  password: ${LEYR_SECRET}\n"), ENV)
    assert config.journal == SharedJournal(
        "postgresql://ingestd@db:5432/ingestd?sslmode=verify-full", SECRET
    )
    assert SECRET not in repr(config.journal)
    assert load_config(write(tmp_path, GOOD), ENV).journal is None


@pytest.mark.parametrize(
    ("journal", "message"),
    [
        ("  url: mysql://u@db/x", "25:8: journal.url must start with postgresql://"),
        (f"  url: postgresql://u:{SECRET}@db/x", "25:8: journal.url must not hold a password"),
        ("  url: postgresql://u@db:port/x", "25:8: journal.url is not a valid URL"),
        ("  url: postgresql://u@db", "25:8: journal.url must name the database"),
        ("  url: postgresql://u@db/x\n  pasword: x", "26:3: unknown key 'pasword' in journal"),
        ("  password: ${LEYR_SECRET}", "24:1: journal is missing the required key 'url'"),
    ],
)
def test_journal_mistakes_are_reported_at_their_place(
    tmp_path: Path, journal: str, message: str
) -> None:
    found = problems(write(tmp_path, GOOD + "journal:\n" + journal + "\n"))
    assert any(message in problem for problem in found), found
    assert not any(SECRET in problem for problem in found)


def test_a_missing_psycopg_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    found = problems(write(tmp_path, GOOD + "journal:\n  url: postgresql://u@db/x\n"))
    assert found == [
        f"{tmp_path / 'c.yaml'}:25:3: a PostgreSQL journal needs psycopg 3: "
        "apt install python3-psycopg (or pip install 'ingestd[postgresql]')"
    ]
