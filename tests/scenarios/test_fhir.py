"""A FHIR R4 target in the daemon: a patient folder mapped to an identifier, the receipt, a crash
mid-upload settled by the conditional create, an expired SMART assertion pausing the target, and
`ingestd check` on the key file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingestd.config.load import load_config
from ingestd.config.model import ConfigError
from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf
from tests.targets.fhir_r4 import fhir_exchanges  # noqa: F401 - a fixture

# Every FHIR request and response of these tests is validated against R4 (tests/targets/fhir_r4).
pytestmark = pytest.mark.usefixtures("fhir_exchanges")

PNR_SYSTEM = "urn:oid:1.2.752.129.2.1.3.1"
LOINC = "http://loinc.org|11506-3|Progress note"
RULES = [
    {
        "name": "notes",
        "set": {"title": "{stem}", "type": LOINC, "category": "Clinical note", "target": "ehr"},
    }
]
PATIENTS = {"patterns": [{"folder": r"(?P<pnr>\d{12})", "id": PNR_SYSTEM + "|{pnr}"}]}


def fhir_config(tree: Tree, sb: Sandbox, **auth: str) -> Path:
    creds = SANDBOX_CREDENTIALS["fhir"]
    target: dict[str, Any] = {"kind": "fhir", "base_url": sb.fhir_base_url}
    target.update(
        auth
        or {
            "token_url": sb.fhir_token_url,
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        }
    )
    return make_config(
        tree, sb, rules=RULES, targets={"ehr": target}, patients=PATIENTS, settle=0.1
    )


def _patient(identifier: str) -> str:
    return "Patient/pat-" + hashlib.sha256(identifier.encode()).hexdigest()[:12]


def test_a_folder_mapped_to_an_identifier_lands_as_a_document_reference(
    tree: Tree, sandbox: Sandbox, daemon_process: Callable[..., DaemonProcess]
) -> None:
    data = pdf("fhir note", 40_000)
    tree.drop("191212121212/note.pdf", data)
    proc = daemon_process(fhir_config(tree, sandbox), "once")
    assert proc.proc.wait(30) == 0
    [receipt] = tree.receipts()
    [doc] = sandbox.documents("fhir")
    assert receipt["status"] == "done"
    assert receipt["document_id"] == doc.id
    assert receipt["patient_id"] == f"{PNR_SYSTEM}|191212121212"
    assert receipt["type"] == LOINC
    assert receipt["attempts"] == 1
    assert doc.patient_id == _patient(f"{PNR_SYSTEM}|191212121212")
    assert doc.sha256 == hashlib.sha256(data).hexdigest() == receipt["sha256"]
    assert (doc.doc_type, doc.fields["category"], doc.name) == (LOINC, "Clinical note", "note.pdf")
    assert doc.fields["identifier"].startswith("urn:ietf:rfc:3986|urn:uuid:")
    assert "191212121212" not in proc.output()


@pytest.mark.slow
def test_a_crash_after_the_server_stored_it_leaves_one_document(
    tree: Tree,
    sandbox_factory: Callable[..., Sandbox],
    daemon_process: Callable[..., DaemonProcess],
) -> None:
    """Killed after the server stored the document but before its answer came back: the
    restarted daemon asks by the identifier committed with the claim and files the stored one."""
    sb = sandbox_factory(latency_seconds=5.0)  # stores, then waits 5 s before answering
    config = fhir_config(tree, sb)
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("191212121212/note.pdf", pdf("crash", 30_000))
    wait_for(lambda: len(sb.documents("fhir")) == 1, timeout=20)
    proc.kill()  # kill -9 while the answer is still on its way
    assert tree.all_receipts() == []
    again = daemon_process(config)
    wait_for(lambda: len(tree.receipts()) == 1, timeout=40)
    [receipt] = tree.receipts()
    [doc] = sb.documents("fhir")
    assert receipt["document_id"] == doc.id
    assert again.stop() == 0
    # The first request is logged once its (unread) answer is written, 5 s after storing.
    wait_for(lambda: [r.route for r in sb.requests("fhir")].count("upload") == 1, timeout=10)
    assert len(sb.documents("fhir")) == 1


def _key_file(tmp_path: Path) -> Path:
    pytest.importorskip("jwt", reason="PyJWT is needed for SMART Backend Services")
    from ingestd.sandbox.fhir_token import sandbox_key_pem

    path = tmp_path / "ingestd-fhir.pem"
    path.write_text(sandbox_key_pem("sandbox-rs384"))
    path.chmod(0o600)
    return path


@pytest.mark.slow
def test_an_expired_assertion_pauses_the_target_with_one_clear_line(
    tree: Tree,
    sandbox_factory: Callable[..., Sandbox],
    daemon_process: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    sb = sandbox_factory(fhir_clock_ahead_seconds=900)  # the server's clock is 15 min ahead
    key = _key_file(tmp_path)
    config = fhir_config(
        tree,
        sb,
        token_url=sb.fhir_token_url,
        client_id=SANDBOX_CREDENTIALS["fhir"]["client_id"],
        private_key=str(key),
        key_id="sandbox-rs384",
    )
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("191212121212/a.pdf", pdf("a"))
    tree.drop("191212121212/b.pdf", pdf("b"))
    wait_for(lambda: "event=target_misconfigured" in proc.output())
    lines = [line for line in proc.output().splitlines() if "target_misconfigured" in line]
    assert len(lines) == 1, lines  # once, not per file
    assert "client_assertion has expired" in lines[0]
    assert "private_key" in lines[0]
    assert key.read_text().splitlines()[1] not in proc.output()
    assert [r for r in sb.requests("fhir") if r.route == "upload"] == []
    assert tree.all_receipts() == []  # the files wait
    assert proc.stop() == 0


# --- ingestd check ---------------------------------------------------------------------------


def _check(tree: Tree, sandbox: Sandbox, private_key: str) -> list[str]:
    config = fhir_config(
        tree,
        sandbox,
        token_url="https://ehr.example/token",
        client_id="ingestd",
        private_key=private_key,
        key_id="k1",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), dict(os.environ))
    return [str(p) for p in caught.value.problems]


def test_check_refuses_a_missing_key_file_at_its_line(tree: Tree, sandbox: Sandbox) -> None:
    [problem] = _check(tree, sandbox, "keys/missing.pem")
    config = tree.root / "ingestd.yaml"
    line = next(
        n for n, text in enumerate(config.read_text().splitlines(), 1) if "private_key" in text
    )
    assert problem.startswith(f"{config}:{line}:"), problem
    assert "targets.ehr.private_key file cannot be read (No such file or directory)" in problem
    assert "missing.pem" not in problem


def test_check_refuses_a_key_file_that_is_no_key(tree: Tree, sandbox: Sandbox) -> None:
    (tree.root / "key.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    [problem] = _check(tree, sandbox, "key.pem")
    assert "holds no PEM private key" in problem


def test_a_key_file_beside_the_config_loads(tree: Tree, sandbox: Sandbox, tmp_path: Path) -> None:
    key = _key_file(tmp_path)
    (tree.root / "fhir.pem").write_bytes(key.read_bytes())
    config = fhir_config(
        tree,
        sandbox,
        token_url=sandbox.fhir_token_url,
        client_id="c",
        private_key="fhir.pem",
        key_id="k1",
    )
    loaded = load_config(str(config), dict(os.environ))
    assert loaded.targets["ehr"].options["private_key"] == str(tree.root / "fhir.pem")


def test_check_takes_a_key_only_the_service_can_read(tree: Tree, sandbox: Sandbox) -> None:
    """`${credential:…}` is read by systemd for the service: offline it is noted, not refused."""
    config = fhir_config(
        tree,
        sandbox,
        token_url=sandbox.fhir_token_url,
        client_id="c",
        private_key="${credential:fhir-private-key}",
        key_id="k1",
    )
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    loaded = load_config(str(config), env, in_service=False)
    assert "ehr" in loaded.targets


def test_check_refuses_plain_http_to_a_remote_fhir_server(tree: Tree, sandbox: Sandbox) -> None:
    config = fhir_config(tree, sandbox, bearer_token="t")
    config.write_text(config.read_text().replace(sandbox.fhir_base_url, "http://fhir.example/r4"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), dict(os.environ))
    [problem] = [str(p) for p in caught.value.problems]
    assert "targets.ehr.base_url must use https://" in problem


def test_verify_proves_fhir_receipts_and_finds_a_change_and_a_move(
    tree: Tree, sandbox: Sandbox
) -> None:
    import json
    import subprocess
    import sys

    config = str(fhir_config(tree, sandbox))
    tree.drop("191212121212/a.pdf", pdf("a"))
    tree.drop("191212121212/b.pdf", pdf("b"))
    tree.drop("191212121212/c.pdf", pdf("c"))

    def ingestd(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ingestd", *args, "-c", config]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert ingestd("once").returncode == 0
    ids = {r["source"]: r["document_id"] for r in tree.receipts()}
    sandbox.change_content(ids["191212121212/b.pdf"], b"%PDF-1.4 not the same")
    sandbox.move_document(ids["191212121212/c.pdf"], "Patient/pat-other")
    result = ingestd("verify", "--json")
    assert result.returncode == 1, result.stderr
    found = {r["receipt"]: r["status"] for r in json.loads(result.stdout)["receipts"]}
    assert found == {
        "191212121212/a.pdf.receipt.json": "ok",
        "191212121212/b.pdf.receipt.json": "different",
        "191212121212/c.pdf.receipt.json": "other_patient",
    }
    assert "191212121212" not in result.stderr
