"""`ingestd demo`: the main job end to end, on a temporary tree.

The sandbox EHR serves both APIs on loopback; `ingestd run` runs as its own process with the
example config (config/ingestd.yaml, with paths, endpoints and credentials pointed at the
sandbox); sample files land in patient folders and the demo shows where each one went, beside
the sandbox's own list of stored documents.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox, samples


# Patient folders as the example config maps them; the last patient is unknown to the EHR, so
# the EHR refuses that file (HTTP 404) and it goes to failed/ with a receipt saying why.
def _fax_tiff(pages: int) -> bytes:
    """A multi-page Group 4 fax (204×196 dpi) as fax software writes it, for a Leyr patient:
    Leyr takes no TIFF, so the example config's convert_to_pdf sends it as a PDF."""
    from PIL import Image, ImageDraw, TiffImagePlugin

    frames = []
    for number in range(1, pages + 1):
        page = Image.new("1", (1728, 2200), 1)
        ImageDraw.Draw(page).text((100, 100), f"Referral, page {number} of {pages}", fill=0)
        frames.append(page)
    out = io.BytesIO()
    TiffImagePlugin.STRIP_SIZE, before = 1 << 30, TiffImagePlugin.STRIP_SIZE  # one strip a page
    try:
        frames[0].save(out, "TIFF", compression="group4", save_all=True,
                       append_images=frames[1:], dpi=(204, 196))  # fmt: skip
    finally:
        TiffImagePlugin.STRIP_SIZE = before
    return out.getvalue()


DEMO_FILES: list[tuple[str, bytes]] = [
    ("Andersson Anna/lab/2026-11/blood-panel.pdf", samples.pdf("blood panel", 40_000)),
    ("191212121212/referral letter.docx", samples.docx("referral letter")),
    ("nymbl-10482/fax/referral.tiff", samples.tiff("fax", 30_000)),
    ("nymbl-10482/insurance_front.png", samples.png("insurance card", 20_000)),
    ("fhir-194107086995/discharge summary.pdf", samples.pdf("discharge summary", 30_000)),
    ("198112189876/consent.pdf", samples.pdf("consent form")),
]
PNR_SYSTEM = "urn:oid:1.2.752.129.2.1.3.1"  # the Swedish personal number's identifier system
KNOWN_PATIENTS = {"se_personal_number:191212121212", "10482", f"{PNR_SYSTEM}|194107086995"}
DEADLINE_SECONDS = 60.0


def example_config() -> dict[str, Any]:
    """The example config: the source tree's copy when run from a checkout, else the package's."""
    checkout = Path(__file__).resolve().parent.parent / "config" / "ingestd.yaml"
    if checkout.is_file():
        text = checkout.read_text()
    else:
        text = resources.files("ingestd").joinpath("demo_files/ingestd.yaml").read_text()
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def demo_config(root: Path, sandbox: Sandbox) -> tuple[Path, Path]:
    """Write the example config, pointed at the sandbox, and its credentials folder."""
    config = example_config()
    config["paths"] = {
        "inbox": "inbox",
        "done": "done",
        "failed": "failed",
        "state": "state/journal.sqlite",
    }
    leyr, nymbl = SANDBOX_CREDENTIALS["leyr"], SANDBOX_CREDENTIALS["nymbl"]
    for target in config["targets"].values():
        if target["kind"] == "leyr":
            target.update(
                base_url=sandbox.leyr_base_url,
                emr=leyr["emr"],
                care_unit_id=leyr["care_unit_id"],
                client_id=leyr["client_id"],
            )
        else:
            target.update(
                base_url=sandbox.nymbl_base_url,
                token_url=sandbox.nymbl_token_url,
                client_id=nymbl["client_id"],
            )
    _add_fhir(config, sandbox)
    config.setdefault("watch", {}).update(settle_seconds=0.5)
    config["metrics"] = {"listen": "127.0.0.1:0"}  # any free port: 9464 may be in use
    config.pop("status_page", None)  # the demo shows the files, not the page
    credentials = root / "credentials"
    credentials.mkdir(mode=0o700)
    for name, value in (
        ("leyr-client-secret", leyr["client_secret"]),
        ("nymbl-client-secret", nymbl["client_secret"]),
        ("nymbl-api-key", nymbl["api_key"]),
        ("fhir-client-secret", SANDBOX_CREDENTIALS["fhir"]["client_secret"]),
        *(("fhir-private-key", pem) for pem in _FHIR_KEY[-1:]),
    ):
        (credentials / name).write_text(value + "\n")
    path = root / "ingestd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    path.chmod(0o600)
    return path, credentials


def _add_fhir(config: dict[str, Any], sandbox: Sandbox) -> None:
    """A FHIR R4 target beside the example's two: folders `fhir-<personal number>` map to the
    patient with that identifier, and their files go there as DocumentReferences (SMART Backend
    Services when PyJWT and cryptography are installed, else a client secret)."""
    creds = SANDBOX_CREDENTIALS["fhir"]
    target: dict[str, Any] = {
        "kind": "fhir",
        "base_url": sandbox.fhir_base_url,
        "token_url": sandbox.fhir_token_url,
        "client_id": creds["client_id"],
        "client_secret": "${credential:fhir-client-secret}",
    }
    try:
        import jwt  # noqa: F401 - only whether it is there
        from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: F401

        from ingestd.sandbox.fhir_token import sandbox_key_pem
    except ImportError:
        pass
    else:
        del target["client_secret"]
        target.update(private_key="${credential:fhir-private-key}", key_id=creds["key_id"])
        _FHIR_KEY.append(sandbox_key_pem(creds["key_id"]))
    config["targets"]["fhir"] = target
    patterns = config.setdefault("patients", {}).setdefault("patterns", [])
    patterns.insert(0, {"folder": r"fhir-(?P<pnr>\d{12})", "id": PNR_SYSTEM + "|{pnr}"})
    rule = {
        "name": "FHIR patients",
        "match": {"patient": f"{PNR_SYSTEM}\\|.*"},
        "set": {
            "title": "{stem}",
            "type": "http://loinc.org|18842-5|Discharge summary",
            "category": "Clinical note",
            "target": "fhir",
        },
    }
    config["rules"].insert(1, rule)


_FHIR_KEY: list[str] = []


def _receipts(root: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for where in ("done", "failed"):
        for path in sorted((root / where).rglob("*.receipt.json")):
            receipt = json.loads(path.read_text())
            found[receipt["source"]] = receipt
    return found


def _show_conversion(receipt: dict[str, Any], opened: int | None) -> bool:
    """Say what a converted file was sent as; False when the EHR's PDF lacks its pages."""
    seen = "was not opened (no pypdf)" if opened is None else f"opens with {opened} page(s)"
    _say(
        f"         converted {receipt['source_format']} -> {receipt['format']}, "
        f"{receipt['pages']} page(s); the EHR's copy {seen}"
    )
    return opened in (None, receipt["pages"])


def _say(text: str = "") -> None:
    print(text, flush=True)


def demo(keep: bool = False) -> int:
    # Made here, not at import: every `ingestd` command imports this module.
    DEMO_FILES.insert(1, ("Andersson Anna/letters/2026-11-21 referral.tif", _fax_tiff(3)))
    root = Path(tempfile.mkdtemp(prefix="ingestd-demo-"))
    sandbox = Sandbox(port=0, known_patients=KNOWN_PATIENTS).start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        config, credentials = demo_config(root, sandbox)
        _say(f"demo folder:  {root}")
        _say(f"sandbox EHR:  {sandbox.url} (Leyr at /leyr/api, Nymbl at /nymbl, FHIR at /fhir/r4)")
        env = dict(os.environ, CREDENTIALS_DIRECTORY=str(credentials))
        log_path = root / "ingestd.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "run", "-c", str(config)],
                stdout=log,
                stderr=log,
                env=env,
            )
        _say(f"daemon:       ingestd run -c {config} (pid {daemon.pid}, log {log_path})")
        _say()
        inbox = root / "inbox"
        for rel, data in DEMO_FILES:
            path = inbox / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            tmp.rename(path)
            _say(f"dropped  inbox/{rel}")
        deadline = time.monotonic() + DEADLINE_SECONDS
        receipts: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(receipts) < len(DEMO_FILES):
            if daemon.poll() is not None:
                break
            time.sleep(0.1)  # polling for receipts, bounded by the deadline
            receipts = _receipts(root)
        _say()
        stored = {doc.id: doc for doc in sandbox.documents()}
        ok = True
        for rel, _data in DEMO_FILES:
            receipt = receipts.get(rel)
            if receipt is None:
                _say(f"MISSING  {rel}: no receipt within {DEADLINE_SECONDS:.0f} s")
                ok = False
            elif receipt["status"] == "done":
                doc = stored.get(receipt["document_id"])
                listed = (
                    "listed by the EHR"
                    if doc and doc.sha256 == receipt["sha256"]
                    else "NOT IN THE EHR"
                )
                ok = ok and doc is not None
                _say(
                    f"done     {rel} -> {receipt['target']} document {receipt['document_id']} "
                    f"({listed}), rule {receipt['rule']!r}"
                )
                if doc is not None and receipt.get("source_format"):
                    ok = _show_conversion(receipt, doc.pages) and ok
            else:
                error = receipt["error"]
                _say(f"failed   {rel} -> {error['kind']}: {error['message']}")
        _say()
        _say("the sandbox EHR now holds:")
        for doc in stored.values():
            _say(f"  {doc.api:5}  {doc.id}  patient {doc.patient_id}  {doc.mime}  {doc.size} bytes")
            if doc.api == "fhir":
                _say(f"         DocumentReference, type {doc.doc_type}, {doc.fields['identifier']}")
        expected_failed = [rel for rel, _ in DEMO_FILES if rel.startswith("198112189876/")]
        ok = ok and all(receipts.get(rel, {}).get("status") == "failed" for rel in expected_failed)
        ok = ok and len(stored) == len(DEMO_FILES) - len(expected_failed)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        _say()
        _say(f"daemon stopped with exit code {code}")
        ok = ok and code == 0
        if not ok:
            _say("the daemon's log (patients and files appear only as keyed hashes):")
            _say(log_path.read_text(errors="replace")[-4000:])
        _say("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        sandbox.stop()
        if keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_demo(args: argparse.Namespace) -> int:
    return demo(keep=args.keep)
