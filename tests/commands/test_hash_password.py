"""`ingestd hash-password`: a password on standard input, the status page's hash on output."""

from __future__ import annotations

import subprocess
import sys

from ingestd.config.statuspage import PasswordHash
from ingestd.web.auth import check_password


def hash_password(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_printed_hash_checks_the_password_and_is_what_the_config_takes() -> None:
    result = hash_password("correct horse battery\n")
    assert result.returncode == 0, result.stderr
    stored = PasswordHash.parse(result.stdout.strip())
    assert stored is not None
    assert check_password(stored, "correct horse battery")  # one newline stripped, no more
    assert not check_password(stored, "correct horse battery\n")
    assert "correct horse" not in result.stdout + result.stderr


def test_a_short_password_is_refused() -> None:
    result = hash_password("short\n")
    assert result.returncode == 2
    assert "10 characters or more" in result.stderr
    assert result.stdout == ""
