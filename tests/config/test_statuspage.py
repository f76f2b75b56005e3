"""`status_page:`: where it listens, and that off loopback it needs a password (FILE:LINE:COL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config.load import load_config
from ingestd.config.model import ConfigError
from ingestd.config.statuspage import PasswordHash
from ingestd.web.auth import check_password, hash_password
from tests.config.test_load import ENV, GOOD, problems, write

HASH = str(hash_password("front desk secret", n=2**10))


def page(tmp_path: Path, lines: str, env: dict[str, str] | None = None) -> str:
    return write(tmp_path, GOOD + "status_page:\n" + lines)


def test_loopback_without_a_password_is_the_default_form(tmp_path: Path) -> None:
    config = load_config(page(tmp_path, "  listen: 127.0.0.1:8081\n"), ENV)
    assert config.status_page is not None
    assert config.status_page.listen == ("127.0.0.1", 8081)
    assert config.status_page.password is None
    assert config.status_page.user == "ingestd"
    assert config.status_page.refresh_seconds == 5.0
    assert config.status_page.url == "http://127.0.0.1:8081/"


def test_no_section_no_page(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD), ENV).status_page is None


def test_off_loopback_without_a_password_is_refused_at_its_line(tmp_path: Path) -> None:
    path = page(tmp_path, "  listen: 0.0.0.0:8081\n")
    line = GOOD.count("\n") + 2
    [problem] = problems(path)
    assert problem.startswith(f"{path}:{line}:11: status_page.listen is not a loopback address")
    assert "password_hash" in problem


def test_off_loopback_with_a_password_loads(tmp_path: Path) -> None:
    text = f"  listen: '[::]:8081'\n  user: desk\n  password_hash: '{HASH}'\n"
    config = load_config(page(tmp_path, text), ENV)
    assert config.status_page is not None
    assert config.status_page.listen == ("::", 8081)
    assert config.status_page.user == "desk"
    assert config.status_page.password is not None
    assert check_password(config.status_page.password, "front desk secret")
    assert config.status_page.url == "http://[::]:8081/"


def test_a_password_from_a_credential_is_only_noted_offline(tmp_path: Path) -> None:
    text = "  listen: 192.0.2.10:8081\n  password_hash: ${credential:ingestd-status}\n"
    config = load_config(page(tmp_path, text), ENV, in_service=False)
    assert config.status_page is not None
    assert config.status_page.password is None
    assert any("ingestd-status" in str(w) for w in config.warnings)
    with pytest.raises(ConfigError):  # the service itself needs it
        load_config(page(tmp_path, text), ENV, in_service=True)


def test_a_credential_holding_the_hash_is_read(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ingestd-status").write_text(HASH + "\n")
    text = "  listen: 192.0.2.10:8081\n  password_hash: ${credential:ingestd-status}\n"
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(creds)}
    config = load_config(page(tmp_path, text), env)
    assert config.status_page is not None
    assert config.status_page.password is not None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("  listen: 8081\n", "status_page.listen must be ADDRESS:PORT"),
        ("  listen: clinic-server:8081\n", "status_page.listen must be ADDRESS:PORT"),
        ("  listen: 127.0.0.1:99999\n", "status_page.listen must be ADDRESS:PORT"),
        ("  user: x\n", "status_page is missing the required key 'listen'"),
        ("  listen: 127.0.0.1:1\n  refresh_seconds: 1\n", "refresh_seconds must be from 2"),
        ("  listen: 127.0.0.1:1\n  user: 'a:b'\n", "status_page.user must be a name"),
        ("  listen: 127.0.0.1:1\n  lisen: x\n", "unknown key 'lisen' in status_page"),
    ],
)
def test_bad_values_are_reported(tmp_path: Path, lines: str, message: str) -> None:
    [problem] = problems(page(tmp_path, lines))
    assert message in problem


def test_a_malformed_hash_is_refused_without_echoing_it(tmp_path: Path) -> None:
    broken = HASH[:-8] + "!!!!!!!!"
    path = page(tmp_path, f"  listen: 127.0.0.1:8081\n  password_hash: '{broken}'\n")
    [problem] = problems(path)
    assert "status_page.password_hash: use scrypt:N:r:p:SALT:HASH" in problem
    assert broken not in problem
    assert HASH[20:40] not in problem


@pytest.mark.parametrize(
    "text",
    [
        "scrypt:1000:8:1:AAAAAAAAAAAAAAAAAAAAAA==:" + "A" * 44,  # n not a power of two
        "scrypt:16384:8:1:AAAA:" + "A" * 44,  # salt too short
        "bcrypt:16384:8:1:AAAAAAAAAAAAAAAAAAAAAA==:" + "A" * 44,
        "scrypt:4194304:8:1:AAAAAAAAAAAAAAAAAAAAAA==:" + "A" * 44,  # 4 GiB of memory
        "",
    ],
)
def test_hash_forms_refused(text: str) -> None:
    assert PasswordHash.parse(text) is None


def test_hash_round_trips_through_its_text() -> None:
    parsed = PasswordHash.parse(HASH)
    assert parsed is not None
    assert str(parsed) == HASH


def test_metrics_listen_still_loopback_only(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, GOOD + "metrics:\n  listen: 0.0.0.0:9464\n"))
    assert "metrics.listen must be a loopback address" in problem
