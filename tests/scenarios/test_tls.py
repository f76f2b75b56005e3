"""A certificate that does not verify is a misconfiguration, not a lost connection (issue 11,
item 8), and a target's `ca_file:` trusts a clinic's private CA, token endpoint included.

A throwaway CA and server certificate are made with the `openssl` command for each test
session, and the real sandbox serves https with them on loopback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingestd.config.load import load_config
from ingestd.config.model import ConfigError
from ingestd.delivery.retrying import Delivered, Refused, deliver
from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from ingestd.targets import CommonSettings, TargetSettings, make_target
from ingestd.targets.base import CertificateUntrusted, Target, Upload
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate, PEM
    chain: Path  # the server's certificate, PEM
    key: Path  # the server's key, PEM


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test CA; it is not installed")
    folder = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", folder / "ca.key", "-out", folder / "ca.pem",
        "-days", "2", "-subj", "/CN=ingestd test clinic CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", folder / "server.key", "-out", folder / "server.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", folder / "server.csr", "-CA", folder / "ca.pem",
        "-CAkey", folder / "ca.key", "-CAcreateserial", "-out", folder / "server.pem",
        "-days", "2", "-extfile", folder / "server.ext",
    )  # fmt: skip
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@pytest.fixture
def https_sandbox(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.chain, pki.key)
    sb = Sandbox(port=0, tls=context).start()
    try:
        yield sb
    finally:
        sb.stop()


def _target(sb: Sandbox, kind: str, ca_file: Path | None) -> Target:
    creds = dict(SANDBOX_CREDENTIALS[kind])
    if kind == "leyr":
        options = {k: creds[k] for k in ("emr", "care_unit_id", "client_id", "client_secret")}
        options["base_url"] = sb.leyr_base_url
    else:
        options = {k: creds[k] for k in ("api_key", "client_id", "client_secret")}
        options |= {"base_url": sb.nymbl_base_url, "token_url": sb.nymbl_token_url}
    return make_target(
        TargetSettings(
            f"{kind}-tls",
            kind,
            options,
            common=CommonSettings(ca_file=None if ca_file is None else str(ca_file)),
        )
    )


def _upload(tmp_path: Path, patient_id: str) -> Upload:
    data = pdf(f"tls-{patient_id}")
    path = tmp_path / f"{patient_id}.pdf"
    path.write_bytes(data)
    return Upload(
        patient_id=patient_id,
        file_name="scan.pdf",
        mime="application/pdf",
        size=len(data),
        known_sha256=hashlib.sha256(data).hexdigest(),
        title="Scan",
        doc_type="Referral",
        fd=os.open(path, os.O_RDONLY),
    )


@pytest.mark.parametrize(("kind", "patient_id"), [("leyr", "p_1"), ("nymbl", "12345")])
def test_an_untrusted_certificate_is_a_misconfiguration_and_sends_nothing(
    https_sandbox: Sandbox, tmp_path: Path, kind: str, patient_id: str
) -> None:
    target = _target(https_sandbox, kind, ca_file=None)
    upload = _upload(tmp_path, patient_id)
    try:
        refused = deliver(target, upload, sleep=lambda seconds: None)
    finally:
        os.close(upload.fd)
    assert isinstance(refused, Refused)
    error = refused.error
    assert isinstance(error, CertificateUntrusted)
    assert "TLS certificate did not verify" in error.message
    assert "certificate" in error.message.split("(", 1)[1]  # OpenSSL's reason
    assert refused.attempts == 0  # no request reached it
    assert "ca_file" in error.action
    assert "REQUESTS_CA_BUNDLE" in error.action
    assert https_sandbox.requests() == []
    assert https_sandbox.documents() == []


@pytest.mark.parametrize(("kind", "patient_id"), [("leyr", "p_1"), ("nymbl", "12345")])
def test_ca_file_trusts_the_private_ca_token_endpoint_included(
    https_sandbox: Sandbox, pki: Pki, tmp_path: Path, kind: str, patient_id: str
) -> None:
    target = _target(https_sandbox, kind, ca_file=pki.ca)
    upload = _upload(tmp_path, patient_id)
    try:
        result = deliver(target, upload, sleep=lambda seconds: None)
    finally:
        os.close(upload.fd)
    assert isinstance(result, Delivered)
    assert result.attempts == 1
    assert len(https_sandbox.documents()) == 1
    expected_apis = {"leyr"} if kind == "leyr" else {"token", "nymbl"}
    assert {r.api for r in https_sandbox.requests()} == expected_apis


def test_ca_file_comes_before_the_environments_bundle(
    https_sandbox: Sandbox, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An environment bundle that does not hold the clinic's CA must not override ca_file.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    target = _target(https_sandbox, "leyr", ca_file=pki.ca)
    upload = _upload(tmp_path, "p_1")
    try:
        assert isinstance(deliver(target, upload, sleep=lambda seconds: None), Delivered)
    finally:
        os.close(upload.fd)


def test_requests_ca_bundle_still_works_without_ca_file(
    https_sandbox: Sandbox, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    target = _target(https_sandbox, "leyr", ca_file=None)
    upload = _upload(tmp_path, "p_1")
    try:
        assert isinstance(deliver(target, upload, sleep=lambda seconds: None), Delivered)
    finally:
        os.close(upload.fd)


# --- the daemon: pause with one line, files wait, a reload with ca_file drains them ----------


def _journal_states(tree: Tree) -> list[str]:
    if not tree.state.exists():
        return []
    with sqlite3.connect(tree.state) as db:
        return sorted(state for (state,) in db.execute("SELECT state FROM files"))


@pytest.mark.slow
def test_the_daemon_pauses_an_untrusted_target_and_a_reload_with_ca_file_drains_it(
    tree: Tree,
    https_sandbox: Sandbox,
    pki: Pki,
    daemon_process: Callable[..., DaemonProcess],
) -> None:
    config = make_config(tree, https_sandbox)
    untrusted = config.read_text()
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("p_1/scan.pdf", pdf("tls leyr"))
    tree.drop("12345/nymbl/letter.pdf", pdf("tls nymbl"))
    wait_for(lambda: proc.output().count("event=target_misconfigured") == 2)
    wait_for(lambda: _journal_states(tree) == ["claimed", "claimed"])
    lines = [line for line in proc.output().splitlines() if "TLS" in line]
    # One ERROR line per target, naming the problem and the fix; nothing about lost connections.
    assert len(lines) == 2
    assert all("level=ERROR" in line or "ERROR" in line for line in lines)
    assert all("did not verify" in line and "ca_file" in line for line in lines), lines
    assert "connection lost" not in proc.output()
    assert "upload_retry" not in proc.output()
    # Waiting, not failed: nothing in failed/ or done/.
    assert [p for p in tree.root.glob("[df][oa]*/**/*") if p.is_file()] == []
    assert https_sandbox.requests() == []
    # The fix: ca_file on both targets; a reload applies it and the waiting files go at once.
    config.write_text(
        untrusted.replace("kind: leyr\n", f"kind: leyr\n    ca_file: {pki.ca}\n").replace(
            "kind: nymbl\n", f"kind: nymbl\n    ca_file: {pki.ca}\n"
        )
    )
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(tree.receipts()) == 2, timeout=30)
    receipts = tree.receipts()
    assert {r["status"] for r in receipts} == {"done"}
    assert [r["attempts"] for r in receipts] == [
        1,
        1,
    ]
    assert len(https_sandbox.documents()) == 2  # each sent once
    assert tree.receipts("failed") == []
    assert proc.output().count("event=target_misconfigured") == 2
    assert proc.stop() == 0


# --- ingestd check ---------------------------------------------------------------------------

CONFIG = """\
paths: {{inbox: /srv/in, done: /srv/done, failed: /srv/failed, state: /srv/j.sqlite}}
targets:
  leyr:
    kind: leyr
    base_url: https://leyr.example/api
    emr: webdoc
    care_unit_id: "1"
    client_id: cid
    client_secret: s
    ca_file: {ca_file}
rules:
  - name: all
    set: {{title: "{{stem}}", type: Scan, target: leyr}}
"""


def _problems(tmp_path: Path, ca_file: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(ca_file=ca_file))
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    return [str(p) for p in caught.value.problems]


def test_ca_file_relative_to_the_config_loads(tmp_path: Path, pki: Pki) -> None:
    shutil.copy(pki.ca, tmp_path / "clinic-ca.pem")
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(ca_file="clinic-ca.pem"))
    path.chmod(0o600)
    config = load_config(str(path), {})
    assert config.targets["leyr"].common.ca_file == str(tmp_path / "clinic-ca.pem")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pem", "targets.leyr.ca_file cannot be read (No such file"),
        (lambda d: d, "targets.leyr.ca_file is a folder"),
        (lambda d: _write(d / "der.cer", b"\x30\x82\x01\x0a" * 50), "holds no PEM certificate"),
    ],
    ids=["missing", "folder", "not-pem"],
)
def test_check_reports_a_bad_ca_file_at_its_line(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    bad = make(tmp_path)
    path = tmp_path / "c.yaml"
    found = _problems(tmp_path, str(bad))
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:10:14: "), found
    assert message in found[0]
    assert str(bad) not in found[0].split(": ", 1)[1]  # the value is never echoed


def test_check_reports_an_unreadable_ca_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    bad = _write(tmp_path / "ca.pem", b"-----BEGIN CERTIFICATE-----\n")
    bad.chmod(0)
    [problem] = _problems(tmp_path, str(bad))
    assert "cannot be read (Permission denied)" in problem


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
