"""The README documents every config key the validator accepts, and every command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestd.cli import build_parser
from ingestd.config.load import load_config
from ingestd.yamlsource import Report

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_every_config_key_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed: set[str] = set()
    original = Report.keys

    def recording(self: Report, node: object, where: str, known: object, *args: object) -> None:
        allowed.update(str(key) for key in known)  # type: ignore[attr-defined]
        original(self, node, where, known, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Report, "keys", recording)
    # The shipped example uses every section, so loading it asks about every key there is.
    load_config(str(ROOT / "config" / "ingestd.yaml"), env={}, in_service=False)
    reference = _section("Configuration reference")
    assert len(allowed) > 40
    missing = sorted(key for key in allowed if f"`{key}`" not in reference)
    assert missing == [], f"undocumented config keys: {missing}"


def test_every_command_is_documented() -> None:
    commands = _section("Commands")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    names = sorted(subparsers.choices)  # type: ignore[union-attr]
    assert names
    for name in names:
        assert re.search(rf"`ingestd {name}\b", commands), f"`ingestd {name}` is not documented"


def test_every_module_is_named_in_how_it_works() -> None:
    """The README's module table names every module (a package's __init__ where it holds code)."""
    section = _section("How it works")
    missing = []
    for path in sorted((ROOT / "ingestd").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ingestd/sandbox/"):
            named = f"`{path.name}`" in section or path.name == "__init__.py"
        elif path.name == "__init__.py" and path.stat().st_size < 400:
            continue  # a package's docstring only
        else:
            named = f"`{rel}`" in section
        if not named:
            missing.append(rel)
    assert missing == [], f"modules missing from README's How it works: {missing}"
