"""Secret references: environment, files, systemd credentials; problems never hold a value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingestd.config.secrets import (
    has_literal,
    is_secret_key,
    readable_by_others,
    resolve,
    resolve_tree,
    strip_one_newline,
)
from ingestd.yamlsource import MarkedDict, Report, load

SECRET = "s3cr3t-value"


def test_env_reference() -> None:
    assert resolve("${DB_PASS}", {"DB_PASS": SECRET}) == (SECRET, [], [])


def test_reference_inside_a_longer_string_and_several_references() -> None:
    env = {"HOST": "ehr.example", "PORT": "8443"}
    assert resolve("https://${HOST}:${PORT}/api", env) == ("https://ehr.example:8443/api", [], [])


def test_missing_env_names_the_reference_only() -> None:
    value, errors, _ = resolve("prefix-${DB_PASS}", {"OTHER": SECRET})
    assert errors == ["${DB_PASS} is not set"]
    assert SECRET not in value


def test_double_dollar_is_a_literal_dollar() -> None:
    assert resolve("pa$$word and $${X}", {}) == ("pa$word and ${X}", [], [])
    assert resolve("cost: $5", {}) == ("cost: $5", [], [])


def test_invalid_reference_forms() -> None:
    _, errors, _ = resolve("${not valid}", {})
    assert errors[0].startswith("${not valid} is not a valid reference")
    _, errors, _ = resolve("${vault:x}", {})
    assert errors[0].startswith("${vault:x} is not a valid reference")
    _, errors, _ = resolve("${file:}", {})
    assert errors == ["${file:} names no file"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("abc\n", "abc"),
        ("abc\n\n", "abc\n"),
        ("abc", "abc"),
        ("abc\r\n", "abc"),
        (" abc \n", " abc "),
        ("\n", ""),
    ],
)
def test_file_reference_strips_exactly_one_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(content.encode())
    assert resolve(f"${{file:{secret}}}", {}) == (expected, [], [])
    assert strip_one_newline(content) == expected


def test_unreadable_file_names_the_reference(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    value, errors, _ = resolve(f"${{file:{missing}}}", {})
    assert value == ""
    assert errors == [f"${{file:{missing}}}: file not readable (No such file or directory)"]


def test_a_folder_is_not_a_secret_file(tmp_path: Path) -> None:
    _, errors, _ = resolve(f"${{file:{tmp_path}}}", {})
    assert len(errors) == 1
    assert errors[0].startswith(f"${{file:{tmp_path}}}")


def test_huge_or_binary_secret_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    assert "larger than" in resolve(f"${{file:{big}}}", {})[1][0]
    assert "not UTF-8" in resolve(f"${{file:{binary}}}", {})[1][0]


def test_credential_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "leyr-client-secret").write_text(SECRET + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve("${credential:leyr-client-secret}", env) == (SECRET, [], [])


def test_credential_without_credentials_directory() -> None:
    value, errors, _ = resolve("${credential:leyr-client-secret}", {})
    assert value == ""
    assert errors == [
        "${credential:leyr-client-secret}: $CREDENTIALS_DIRECTORY is not set "
        "(systemd sets it for LoadCredential=)"
    ]


def test_missing_credential_and_path_escapes(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    _, errors, _ = resolve("${credential:absent}", env)
    assert errors == ["${credential:absent}: file not readable (No such file or directory)"]
    _, errors, _ = resolve("${credential:../etc/passwd}", env)
    assert errors == ["${credential:../etc/passwd} is not a valid credential name"]
    _, errors, _ = resolve("${credential:..}", env)
    assert errors == ["${credential:..} is not a valid credential name"]


def test_secret_like_keys() -> None:
    for key in ("client_secret", "api_key", "password", "token", "smtp_password", "private_key"):
        assert is_secret_key(key)
    for key in ("client_id", "base_url", "max_bytes", "created_by_id", "kind"):
        assert not is_secret_key(key)


def test_has_literal() -> None:
    assert has_literal("abc")
    assert has_literal("abc${X}")
    assert not has_literal("${credential:x}")
    assert not has_literal(" ${A}${B} ")


def _tree(text: str) -> MarkedDict:
    data, problems = load(text, "c.yaml")
    assert problems == []
    assert isinstance(data, MarkedDict)
    return data


def test_resolve_tree_replaces_in_place_and_reports_at_the_value() -> None:
    tree = _tree("t:\n  a: ${A}\n  list:\n    - x${B}\n  n: 5\n  c: ${MISSING}\n")
    report = Report("c.yaml")
    resolve_tree(tree, {"A": SECRET, "B": "y"}, report, exposed=False)
    assert tree["t"]["a"] == SECRET
    assert tree["t"]["list"] == ["xy"]
    assert tree["t"]["n"] == 5
    assert [str(p) for p in report.problems] == ["c.yaml:6:6: ${MISSING} is not set"]


def test_inline_secret_warns_only_when_the_file_is_exposed() -> None:
    text = "t:\n  client_secret: " + SECRET + "\n  api_key: ${credential:k}\n"
    env = {"CREDENTIALS_DIRECTORY": "/nonexistent"}
    exposed = Report("c.yaml")
    resolve_tree(_tree(text), env, exposed, exposed=True)
    warnings = exposed.warnings
    assert len(warnings) == 1
    assert str(warnings[0]).startswith(
        "c.yaml:2:18: warning: client_secret is written inline in a config file that group or"
    )
    private = Report("c.yaml")
    resolve_tree(_tree(text), env, private, exposed=False)
    assert private.warnings == []
    assert all(SECRET not in str(p) for p in exposed.problems + private.problems)


def test_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("x: 1\n")
    os.chmod(path, 0o600)
    assert not readable_by_others(str(path))
    os.chmod(path, 0o640)
    assert readable_by_others(str(path))
    os.chmod(path, 0o604)
    assert readable_by_others(str(path))
    assert not readable_by_others(str(tmp_path / "missing"))


def test_offline_commands_only_note_credentials_that_need_systemd(tmp_path: Path) -> None:
    _, errors, notes = resolve("${credential:leyr-client-secret}", {}, in_service=False)
    assert errors == []
    assert len(notes) == 1
    assert "CREDENTIALS_DIRECTORY" in notes[0]
    # A missing environment variable is still an error offline: the admin's shell can have it.
    _, errors, notes = resolve("${NOT_SET_ANYWHERE}", {}, in_service=False)
    assert errors == ["${NOT_SET_ANYWHERE} is not set"]
    assert notes == []
    # With a credentials folder, a missing credential is an error again.
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    _, errors, notes = resolve("${credential:absent}", env, in_service=False)
    assert len(errors) == 1
    assert notes == []
