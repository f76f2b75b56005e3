"""Issue 3 as an admin sees it: `check`, `explain`, reload, and failures a receptionist can act on.

The commands run as real processes against real files; the daemon against the sandbox EHR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf, tiff

ROOT = Path(__file__).resolve().parents[2]
SECRETS = [
    SANDBOX_CREDENTIALS["leyr"]["client_secret"],
    SANDBOX_CREDENTIALS["nymbl"]["client_secret"],
    SANDBOX_CREDENTIALS["nymbl"]["api_key"],
]

RULES: list[dict[str, Any]] = [
    {
        "name": "lab",
        "match": {"path": "lab/**", "format": ["application/pdf"]},
        "set": {
            "title": "Lab {stem} {date:%Y}",
            "type": "Lab Result",
            "target": "leyr",
            "created_by_id": "resource-9",
        },
    },
    {
        "name": "fax",
        "match": {"path": "fax/**"},
        "set": {
            "title": "Fax {name}",
            "type": "Referral",
            "target": "nymbl",
            "description": "from {folder}",
        },
    },
    {"name": "junk", "match": {"filename": "*.junk"}, "fail": "junk files are not documents"},
    {"name": "rest", "set": {"title": "{stem}{ext}", "type": "Scan", "target": "leyr"}},
]


def ingestd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or dict(os.environ),
    )


FIVE_MISTAKES = """\
paths:
  inbox: /srv/in
  done: /srv/done
  failed: /srv/failed
  state: /srv/state/journal.sqlite
  spool: /srv/spool
targets:
  leyr:
    kind: leyr
    base_url: http://ehr.example.com/api
    emr: webdoc
    care_unit_id: cu
    client_id: id
    client_secret: ${LEYR_SECRET}
    concurency: 4
rules:
  - name: lab
    match: {path: "lab/**"}
    set: {title: "{stme}", type: Lab, target: leyr}
  - name: fax
    match: {filename_regex: "(unclosed"}
    set: {title: "{stem}", type: Fax, target: leyr}
"""


def test_check_reports_five_mistakes_with_their_lines_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(FIVE_MISTAKES)
    config.chmod(0o600)
    result = ingestd("check", "-c", str(config), env={**os.environ, "LEYR_SECRET": "s3cr3t"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "warning" not in line]
    assert len(lines) == 5, result.stderr
    assert all(line.startswith(f"{config}:") for line in lines)
    by_line = {int(line.split(":")[1]): line for line in lines}
    assert "spool" in by_line[6]  # unknown key
    assert "https" in by_line[10]  # http:// to a host that is not loopback
    assert "concurrency" in by_line[15]  # did you mean
    assert "stme" in by_line[19]
    assert "stem" in by_line[19]
    assert "regex" in by_line[21]  # does not compile
    assert "s3cr3t" not in result.stdout + result.stderr


def test_check_accepts_the_shipped_example() -> None:
    result = ingestd("check", "-c", str(ROOT / "config" / "ingestd.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_explain_shows_what_the_upload_then_does(tree: Tree, sandbox: Sandbox) -> None:
    config = make_config(tree, sandbox, rules=RULES)
    files = {
        "p_7/lab/2026/blood.pdf": pdf("blood"),
        "12345/fax/referral.tiff": tiff("ref"),
        "p_7/letter.pdf": pdf("letter"),
        "p_7/old.junk": pdf("junk"),
    }
    for rel, data in files.items():
        tree.drop(rel, data)
    result = ingestd("explain", "-c", str(config), "--json", str(tree.inbox))
    assert result.returncode == 0, result.stderr
    explained = {item["path"]: item for item in json.loads(result.stdout)}
    assert set(explained) == set(files)
    assert explained["p_7/old.junk"]["verdict"] == "fail"
    assert explained["p_7/old.junk"]["error"]["kind"] == "rule_failed"
    lab = explained["p_7/lab/2026/blood.pdf"]
    assert [r["rule"] for r in lab["rules"] if not r["matched"]] == []
    fax = explained["12345/fax/referral.tiff"]
    assert [r["rule"] for r in fax["rules"]] == ["lab", "fax"]
    assert "lab/**" in fax["rules"][0]["why"]
    assert tree.all_receipts() == []
    assert sandbox.requests() == []

    assert ingestd("once", "-c", str(config)).returncode == 1  # the junk file fails
    receipts = {r["source"]: r for r in tree.all_receipts()}
    for rel, item in explained.items():
        receipt = receipts[rel]
        assert receipt["status"] == {"upload": "done", "fail": "failed"}[item["verdict"]]
        if item["verdict"] == "upload":
            decision = item["decision"]
            assert (receipt["rule"], receipt["title"], receipt["type"], receipt["target"]) == (
                decision["rule"],
                decision["title"],
                decision["doc_type"],
                decision["target"],
            )
            assert receipt["patient_id"] == item["patient_id"]
            assert receipt["format"] == item["format"]
    stored = {d.name: d for d in sandbox.documents()}
    assert stored["referral.tiff"].fields["description"] == "from 12345"
    assert stored["Lab blood " + explained["p_7/lab/2026/blood.pdf"]["decision"]["title"][-4:]]


def _rules_file(config: Path, rules: list[dict[str, Any]]) -> None:
    data = yaml.safe_load(config.read_text())
    data["rules"] = rules
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def test_sighup_with_a_broken_config_keeps_the_old_rules_and_a_fixed_one_applies(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = make_config(tree, sandbox, rules=RULES)
    proc = daemon_process(config)
    proc.wait_started()
    good = config.read_text()
    config.write_text(good + "rules_typo: [\n")  # a YAML syntax error
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload_refused" in proc.output())
    assert f"{config}:" in proc.output()  # the problem, as FILE:LINE:COL
    tree.drop("p_1/before.pdf", pdf("before"))
    [receipt] = wait_for(tree.receipts)
    assert receipt["rule"] == "rest"  # the old rules still run

    config.write_text(good)
    _rules_file(
        config, [{"name": "new", "set": {"title": "N {stem}", "type": "New", "target": "leyr"}}]
    )
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in proc.output())
    tree.drop("p_1/after.pdf", pdf("after"))
    wait_for(lambda: len(tree.receipts()) == 2)
    after = next(r for r in tree.receipts() if r["source"] == "p_1/after.pdf")
    assert after["rule"] == "new"
    assert after["title"] == "N after"
    assert proc.stop() == 0


def test_an_edited_config_file_is_reloaded_without_a_signal(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = make_config(tree, sandbox, rules=RULES)
    proc = daemon_process(config)
    proc.wait_started()
    _rules_file(config, [{"name": "edited", "set": {"title": "E", "type": "E", "target": "leyr"}}])
    wait_for(lambda: "event=reloaded" in proc.output())
    tree.drop("p_1/x.pdf", pdf("x"))
    [receipt] = wait_for(tree.receipts)
    assert receipt["rule"] == "edited"
    assert proc.stop() == 0


def test_failures_a_receptionist_can_act_on_and_nothing_reaches_the_ehr(
    tree: Tree, sandbox: Sandbox
) -> None:
    rules: list[dict[str, Any]] = [
        {"name": "leyr only", "match": {"path": "lab/**"}, "set": {
            "title": "{stem}", "type": "Lab", "target": "leyr"}},
    ]  # fmt: skip
    patients = {"patterns": [{"folder": r"(?P<pnr>\d{12})", "id": "se_personal_number:{pnr}"}]}
    config = make_config(tree, sandbox, rules=rules, patients=patients)
    tree.drop("191212121213/lab/wrong-check-digit.pdf", pdf("a"))  # bad personal number
    tree.drop("Bad:Folder/lab/unmapped.pdf", pdf("b"))  # not a form Leyr takes
    tree.drop("p_1/unmatched.pdf", pdf("c"))  # no rule matches
    assert ingestd("once", "-c", str(config)).returncode == 1
    failed = {r["source"]: r["error"] for r in tree.receipts("failed")}
    assert failed["191212121213/lab/wrong-check-digit.pdf"]["kind"] == "invalid_patient_id"
    assert failed["Bad:Folder/lab/unmapped.pdf"]["kind"] == "invalid_patient_id"
    assert failed["p_1/unmatched.pdf"]["kind"] == "no_rule"
    for error in failed.values():
        assert "ingestd retry" in error["message"]
    assert sandbox.requests() == []


def test_no_secret_in_any_output_of_check_explain_or_the_daemon(
    tree: Tree, sandbox: Sandbox
) -> None:
    config = make_config(tree, sandbox, rules=RULES)
    tree.drop("p_1/a.pdf", pdf("a"))
    tree.drop("12345/fax/b.tiff", tiff("b"))
    outputs = [
        ingestd("check", "-c", str(config)),
        ingestd("explain", "-c", str(config), str(tree.inbox)),
        ingestd("explain", "-c", str(config), "--json", str(tree.inbox)),
        ingestd("once", "-c", str(config)),
    ]
    assert len(tree.receipts()) == 2
    for result in outputs:
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr


def test_an_ignored_file_is_left_alone_until_it_changes(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    rules = [{"name": "logs", "match": {"filename": "*.log"}, "ignore": True}, *RULES]
    config = make_config(tree, sandbox, rules=rules)
    proc = daemon_process(config)
    proc.wait_started()
    log_file = tree.drop("p_1/scanner.log", b"scanner started\n")
    inode = log_file.stat().st_ino
    tree.drop("p_1/after.pdf", pdf("after"))  # a file dropped later is processed meanwhile
    wait_for(tree.receipts)
    wait_for(lambda: proc.output().count("event=file_ignored") == 1)
    assert log_file.stat().st_ino == inode
    assert log_file.read_bytes() == b"scanner started\n"
    log_file.write_bytes(b"scanner started\nscanner stopped\n")  # changed: judged again
    wait_for(lambda: proc.output().count("event=file_ignored") == 2)
    assert proc.stop() == 0
    assert log_file.exists()
    assert len(sandbox.documents()) == 1
