"""`ingestd verify` against the sandbox: receipts proven, a document deleted, changed or moved in
the EHR, an outage mid-run (nothing reported as bad), resuming, `--again`, `--json`, filters and
exit codes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import Tree, make_config
from tests.samples import pdf

LEYR_FILES = {"abc_1/a.pdf": pdf("a"), "abc_1/b.pdf": pdf("b"), "abc_2/c.pdf": pdf("c")}
NYMBL_FILES = {"12345/nymbl/n1.pdf": pdf("n1"), "12345/nymbl/n2.pdf": pdf("n2")}


def ingestd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args], capture_output=True, text=True, timeout=120
    )


def verify_json(config: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = ingestd("verify", "-c", config, "--json", *args)
    return result.returncode, json.loads(result.stdout), result.stderr


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {item["receipt"]: item["status"] for item in report["receipts"]}


@pytest.fixture
def uploaded(tree: Tree, sandbox: Sandbox) -> str:
    """Five files uploaded by `ingestd once` (three to Leyr, two to Nymbl); the config path."""
    config = str(make_config(tree, sandbox))
    for rel, data in {**LEYR_FILES, **NYMBL_FILES}.items():
        tree.drop(rel, data)
    result = ingestd("once", "-c", config)
    assert result.returncode == 0, result.stderr
    (tree.root / "once.log").write_text(result.stderr)
    assert len(tree.receipts("done")) == 5
    return config


def doc_id(tree: Tree, rel: str) -> str:
    receipt = json.loads((tree.done / f"{rel}.receipt.json").read_text())
    return str(receipt["document_id"])


def test_all_hold_then_a_second_run_skips_and_again_rechecks(
    tree: Tree, sandbox: Sandbox, uploaded: str
) -> None:
    result = ingestd("verify", "-c", uploaded)
    assert result.returncode == 0, result.stderr
    assert "5 receipt(s): 5 hold" in result.stdout
    assert "abc_1/a.pdf.receipt.json" in result.stdout  # the table: the operator's own files
    assert result.stderr == ""
    gets = len([r for r in sandbox.requests() if r.method == "GET"])
    assert gets >= 5

    code, report, _ = verify_json(uploaded)
    assert code == 0
    assert report["summary"]["skipped"] == 5
    assert len([r for r in sandbox.requests() if r.method == "GET"]) == gets  # nothing asked

    code, report, _ = verify_json(uploaded, "--again")
    assert code == 0
    assert report["summary"]["ok"] == 5
    assert len([r for r in sandbox.requests() if r.method == "GET"]) > gets
    # The receipts are untouched; the verified-at time is in the journal.
    assert all("verified_at" not in r for r in tree.receipts("done"))
    with sqlite3.connect(tree.state) as db:
        assert db.execute("SELECT COUNT(*) FROM verified").fetchone()[0] == 5


def test_deleted_changed_and_moved_documents_are_reported_without_patient_data(
    tree: Tree, sandbox: Sandbox, uploaded: str
) -> None:
    sandbox.delete_document(doc_id(tree, "abc_1/a.pdf"))
    sandbox.change_content(doc_id(tree, "abc_1/b.pdf"), pdf("tampered"))
    sandbox.move_document(doc_id(tree, "abc_2/c.pdf"), "abc_3")
    sandbox.change_content(doc_id(tree, "12345/nymbl/n1.pdf"), pdf("tampered too"))

    code, report, stderr = verify_json(uploaded)
    assert code == 1
    assert statuses(report) == {
        "abc_1/a.pdf.receipt.json": "missing",
        "abc_1/b.pdf.receipt.json": "different",
        "abc_2/c.pdf.receipt.json": "missing",  # not this patient's any more
        "12345/nymbl/n1.pdf.receipt.json": "different",
        "12345/nymbl/n2.pdf.receipt.json": "ok",
    }
    assert report["summary"] == {
        "receipts": 5, "ok": 1, "skipped": 0, "missing": 2, "different": 2,
        "other_patient": 0, "unverified": 0,
    }  # fmt: skip
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 4
    assert all("event=verify_failed" in line and "receipt=f:" in line for line in errors)
    # Each file's keyed hash is the one `once` logged for it: the two can be put side by side.
    once_log = (tree.root / "once.log").read_text()
    for line in errors:
        file_hash = line.split(" file=")[1].split()[0]
        assert f"event=file_done file={file_hash} " in once_log
    for secret in ("abc_1", "abc_2", "12345", "a.pdf", "n1.pdf", doc_id(tree, "abc_1/a.pdf")):
        assert secret not in stderr

    # What failed is checked again next time, not skipped; what held is skipped.
    code, report, _ = verify_json(uploaded)
    assert code == 1
    assert statuses(report)["12345/nymbl/n2.pdf.receipt.json"] == "skipped"
    assert statuses(report)["abc_1/a.pdf.receipt.json"] == "missing"


def test_an_outage_mid_run_is_not_verified_not_bad_and_the_next_run_resumes(
    tree: Tree, sandbox: Sandbox, uploaded: str
) -> None:
    # Nymbl answers, Leyr stops answering (every read fails) partway through the receipts.
    sandbox.add_fault(Fault(api="leyr", route="get", status=503, times=None))
    code, report, stderr = verify_json(uploaded)
    assert code == 3
    assert report["summary"]["ok"] == 2
    assert report["summary"]["unverified"] == 3
    assert report["summary"]["missing"] == report["summary"]["different"] == 0
    assert "ERROR" not in stderr
    assert stderr.count("event=verify_target_paused") == 1
    # The target paused after one receipt's retries: the others were not asked.
    leyr_gets = [r for r in sandbox.requests("leyr") if r.route == "get"]
    assert len(leyr_gets) <= 4 + 3  # one receipt's tries, plus those already under way

    text = ingestd("verify", "-c", uploaded, "--target", "nymbl")
    assert text.returncode == 0

    sandbox.clear_faults()
    code, report, _ = verify_json(uploaded)
    assert code == 0
    assert report["summary"]["skipped"] == 2
    assert report["summary"]["ok"] == 3


def test_a_transient_error_is_retried_and_the_summary_says_what_was_not_verified(
    tree: Tree, sandbox: Sandbox, uploaded: str
) -> None:
    sandbox.add_fault(Fault(api="nymbl", route="value", status=503, retry_after="0", times=2))
    code, report, _ = verify_json(uploaded, "--target", "nymbl")
    assert code == 0
    assert report["summary"]["ok"] == 2

    sandbox.add_fault(Fault(api="leyr", status=401, times=None))
    result = ingestd("verify", "-c", uploaded, "--target", "leyr", "--again")
    assert result.returncode == 3
    assert "3 not verified" in result.stdout
    assert "credentials refused" in result.stdout


def test_json_shape_and_filters(tree: Tree, sandbox: Sandbox, uploaded: str) -> None:
    code, report, _ = verify_json(uploaded, "--target", "nymbl")
    assert code == 0
    assert set(report) == {"summary", "receipts"}
    assert set(report["summary"]) == {
        "receipts", "ok", "skipped", "missing", "different", "other_patient", "unverified",
    }  # fmt: skip
    [first, _] = report["receipts"]
    assert set(first) == {"receipt", "target", "document_id", "status", "detail", "verified_at"}
    assert first["target"] == "nymbl"
    assert first["document_id"] == doc_id(tree, "12345/nymbl/n1.pdf")
    assert first["verified_at"].endswith("Z")

    # PATH: a patient folder, a done file, a receipt.
    code, report, _ = verify_json(uploaded, "--again", str(tree.done / "abc_1"))
    assert sorted(statuses(report)) == ["abc_1/a.pdf.receipt.json", "abc_1/b.pdf.receipt.json"]
    file_and_receipt = [str(tree.done / "abc_2/c.pdf"), str(tree.done / "abc_1/a.pdf.receipt.json")]
    code, report, _ = verify_json(uploaded, *file_and_receipt)
    assert sorted(statuses(report)) == ["abc_1/a.pdf.receipt.json", "abc_2/c.pdf.receipt.json"]

    # --since: every receipt is from today; none is from tomorrow.
    code, report, _ = verify_json(uploaded, "--since", "2000-01-01")
    assert report["summary"]["receipts"] == 5
    code, report, _ = verify_json(uploaded, "--since", "2999-01-01")
    assert (code, report["summary"]["receipts"]) == (0, 0)


def test_exit_2_for_bad_config_and_bad_usage(tree: Tree, sandbox: Sandbox, uploaded: str) -> None:
    assert ingestd("verify", "-c", uploaded, "--target", "nosuch").returncode == 2
    assert ingestd("verify", "-c", uploaded, "--since", "yesterday").returncode == 2
    outside = tree.root / "elsewhere.pdf"
    outside.write_bytes(pdf("x"))
    assert ingestd("verify", "-c", uploaded, str(outside)).returncode == 2
    broken = Path(uploaded).with_name("broken.yaml")
    broken.write_text("paths: [\n")
    result = ingestd("verify", "-c", str(broken))
    assert result.returncode == 2
    assert "broken.yaml:" in result.stderr
