"""The spine, end to end: `ingestd run` as a process, the sandbox EHR on loopback, real files.

Every test waits by polling for a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.sandbox import Fault, Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import docx, gif, pdf, png, tiff

pytestmark = pytest.mark.slow

Start = Callable[..., DaemonProcess]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _uploads(sandbox: Sandbox) -> list:
    return [r for r in sandbox.requests() if r.route == "upload"]


def test_a_file_reaches_each_api_with_identical_bytes(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    leyr_file = pdf("leyr", 50_000)
    nymbl_file = tiff("nymbl", 30_000)
    tree.drop("p_100/scan.pdf", leyr_file)
    tree.drop("12345/nymbl/fax.tiff", nymbl_file)

    wait_for(lambda: len(tree.receipts()) == 2)
    receipts = {r["source"]: r for r in tree.receipts()}
    stored = {d.id: d for d in sandbox.documents()}

    leyr = receipts["p_100/scan.pdf"]
    assert leyr["status"] == "done"
    assert leyr["target"] == "leyr"
    assert stored[leyr["document_id"]].sha256 == _sha(leyr_file) == leyr["sha256"]
    assert stored[leyr["document_id"]].patient_id == "p_100"
    assert leyr["format"] == "application/pdf"
    assert leyr["size"] == len(leyr_file)
    # Audit: who dropped it, and the rule's line in the config.
    assert leyr["dropped_by"]["uid"] == os.getuid()
    assert leyr["dropped_by"]["user"]
    assert leyr["rule"] == "everything"
    assert isinstance(leyr["rule_line"], int)
    assert (tree.done / "p_100" / "scan.pdf").read_bytes() == leyr_file

    nymbl = receipts["12345/nymbl/fax.tiff"]
    assert nymbl["target"] == "nymbl"
    assert nymbl["type"] == "Referral"
    assert stored[nymbl["document_id"]].sha256 == _sha(nymbl_file)
    assert stored[nymbl["document_id"]].name == "fax.tiff"
    assert (tree.done / "12345" / "nymbl" / "fax.tiff").exists()
    assert not list(tree.inbox.rglob("*.tiff"))
    assert not list(tree.inbox.rglob("*.pdf"))
    assert proc.stop() == 0


def test_slow_writer_hidden_rename_and_new_folder_are_each_uploaded_once_complete(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = daemon_process(make_config(tree, sandbox, settle=0.5))
    proc.wait_started()
    slow = pdf("slow", 400_000)
    pause = threading.Event()

    def slow_writer() -> None:
        path = tree.inbox / "p_1" / "slow.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for offset in range(0, len(slow), 40_000):
                handle.write(slow[offset : offset + 40_000])
                handle.flush()
                pause.wait(0.3)  # the writer's own pace: longer than the settle time in total

    writer = threading.Thread(target=slow_writer)
    writer.start()
    renamed = png("renamed", 20_000)
    tree.drop("p_2/renamed.png", renamed)  # written under a hidden name, then renamed
    fresh = docx("fresh")
    folder = tree.inbox / "p_new"
    folder.mkdir()
    (folder / "letter.docx").write_bytes(fresh)  # written the instant the folder exists
    writer.join()

    wait_for(lambda: len(tree.receipts()) == 3, timeout=30)
    by_name = {d.name: d for d in sandbox.documents()}
    assert by_name["slow"].sha256 == _sha(slow)
    assert by_name["renamed"].sha256 == _sha(renamed)
    assert by_name["letter"].sha256 == _sha(fresh)
    assert len(sandbox.documents()) == 3
    assert proc.stop() == 0


def test_files_already_in_the_inbox_at_start_are_processed(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    for n in range(5):
        tree.drop(f"p_{n}/old-{n}.pdf", pdf(f"old{n}"))
    proc = daemon_process(make_config(tree, sandbox))
    wait_for(lambda: len(tree.receipts()) == 5)
    assert len(sandbox.documents()) == 5
    assert proc.stop() == 0


def _bytes_read(pid: int) -> int:
    """Bytes the process has read with read/pread/recv (Linux /proc/PID/io `rchar`)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


@pytest.mark.parametrize("api", ["leyr", "nymbl"])
def test_each_file_is_read_once_hashed_while_it_is_sent(
    tree: Tree, sandbox: Sandbox, daemon_process: Start, api: str
) -> None:
    """Issue 6: no separate hashing pass. The daemon reads an 8 MB file once (plus the small
    heads its type and writer probes read); the receipt's hash is still the file's."""
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    data = pdf("read-once", 8_000_000)
    folder = "p_100" if api == "leyr" else "12345/nymbl"
    before = _bytes_read(proc.proc.pid)
    tree.drop(f"{folder}/big.pdf", data)
    wait_for(lambda: len(tree.receipts()) == 1)
    read = _bytes_read(proc.proc.pid) - before
    receipt = tree.receipts()[0]
    assert receipt["status"] == "done"
    assert receipt["sha256"] == _sha(data)
    assert sandbox.documents()[0].sha256 == _sha(data)
    assert len(data) <= read < 1.25 * len(data), f"read {read:,} bytes for {len(data):,}"
    assert proc.stop() == 0


def test_too_large_and_refused_type_fail_without_any_request(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    config = make_config(tree, sandbox)
    text = config.read_text().replace("kind: leyr\n", "kind: leyr\n    max_bytes: 100000\n")
    config.write_text(text)
    proc = daemon_process(config)
    proc.wait_started()
    tree.drop("p_1/big.pdf", pdf("big", 200_000))
    tree.drop("p_1/anim.gif", gif("x"))
    wait_for(lambda: len(tree.receipts("failed")) == 2)
    failed = {r["source"]: r for r in tree.receipts("failed")}
    assert failed["p_1/big.pdf"]["error"]["kind"] == "too_large"
    assert failed["p_1/anim.gif"]["error"]["kind"] == "unsupported_type"
    assert all(r["attempts"] == 0 for r in failed.values())
    assert _uploads(sandbox) == []
    assert sandbox.requests("token") == []
    assert (tree.failed / "p_1" / "big.pdf").exists()
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("fault", "status", "attempts", "error"),
    [
        # Transient answers are retried until the upload is confirmed.
        (Fault(api="leyr", route="upload", status=503, times=2), "done", 3, None),
        (Fault(api="leyr", route="upload", status=429, retry_after="1"), "done", 2, None),
        # Other 4xx are final after exactly one attempt, with the status in the receipt.
        (Fault(api="leyr", route="upload", status=400), "failed", 1, ("rejected", 400)),
        (Fault(api="leyr", route="upload", status=404), "failed", 1, ("patient_not_found", 404)),
    ],
    ids=["503-twice", "429-retry-after", "400", "404"],
)
def test_each_ehr_answer_ends_as_the_contract_says(
    tree: Tree,
    sandbox: Sandbox,
    daemon_process: Start,
    fault: Fault,
    status: str,
    attempts: int,
    error: tuple[str, int] | None,
) -> None:
    sandbox.add_fault(fault)
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("p_1/answer.pdf", pdf(f"answer-{fault.status}"))
    [receipt] = wait_for(tree.all_receipts, timeout=30)
    assert receipt["status"] == status
    assert receipt["attempts"] == attempts
    if error is None:
        assert [d.id for d in sandbox.documents()] == [receipt["document_id"]]
    else:
        assert (receipt["error"]["kind"], receipt["error"]["http_status"]) == error
        assert "ingestd retry" in receipt["error"]["message"]
        assert sandbox.documents() == []
    assert proc.stop() == 0


def test_root_files_and_links_go_to_failed_with_their_kind(
    tree: Tree, sandbox: Sandbox, daemon_process: Start, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(pdf("secret"))
    (tree.inbox / "p_1").mkdir()
    (tree.inbox / "p_1" / "link.pdf").symlink_to(secret)
    os.mkfifo(tree.inbox / "p_1" / "pipe.pdf")
    tree.drop("loose.pdf", pdf("loose"))
    tree.drop("p_1/fine.pdf", pdf("fine"))
    proc = daemon_process(make_config(tree, sandbox))
    wait_for(lambda: len(tree.receipts("failed")) == 3 and len(tree.receipts()) == 1)
    kinds = {r["source"]: r["error"]["kind"] for r in tree.receipts("failed")}
    assert kinds == {
        "loose.pdf": "no_patient_folder",
        "p_1/link.pdf": "not_a_regular_file",
        "p_1/pipe.pdf": "not_a_regular_file",
    }
    assert (tree.failed / "p_1" / "link.pdf").is_symlink()
    assert [d.name for d in sandbox.documents()] == ["fine"]
    assert proc.stop() == 0


def test_collisions_in_done_never_overwrite(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    (tree.done / "p_1").mkdir(parents=True)
    (tree.done / "p_1" / "scan.pdf").write_bytes(b"put there by hand")
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("p_1/scan.pdf", pdf("one"))
    wait_for(lambda: len(tree.receipts()) == 1)
    tree.drop("p_1/scan.pdf", pdf("two"))
    wait_for(lambda: len(tree.receipts()) == 2)
    assert (tree.done / "p_1" / "scan.pdf").read_bytes() == b"put there by hand"
    assert sorted(r["file"] for r in tree.receipts()) == ["scan (1).pdf", "scan (2).pdf"]
    assert proc.stop() == 0


def test_once_processes_the_inbox_and_exits_with_its_code(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    tree.drop("p_1/a.pdf", pdf("a"))
    tree.drop("p_1/b.pdf", pdf("b"))
    config = make_config(tree, sandbox)
    proc = daemon_process(config, command="once")
    assert proc.proc.wait(60) == 0
    assert len(tree.receipts()) == 2
    tree.drop("p_1/c.gif", gif("c"))
    proc = daemon_process(config, command="once")
    assert proc.proc.wait(60) == 1
    assert len(tree.receipts("failed")) == 1


def test_nothing_printed_holds_patient_ids_names_secrets_or_document_ids(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    sandbox.add_fault(Fault(api="leyr", route="upload", action="status", status=503, times=1))
    proc = daemon_process(make_config(tree, sandbox))
    proc.wait_started()
    tree.drop("p_4455/Svensson Lab Result.pdf", pdf("phi"))
    tree.drop("98765/nymbl/Referral Karlsson.pdf", pdf("phi2"))
    tree.drop("p_4455/Karlsson photo.gif", gif("phi3"))
    tree.drop("p_4455/sub folder/Lindqvist.pdf", pdf("phi4"))
    wait_for(lambda: len(tree.all_receipts()) == 4, timeout=30)
    assert proc.stop() == 0
    printed = proc.output()
    assert "event=file_done" in printed
    assert "event=file_failed" in printed
    forbidden = ["p_4455", "98765", "Svensson", "Karlsson", "Lindqvist", "sub folder", "PDF-1.4"]
    forbidden += [
        os.environ[name] for name in ("TEST_LEYR_SECRET", "TEST_NYMBL_KEY", "TEST_NYMBL_SECRET")
    ]
    forbidden += [r["document_id"] for r in tree.receipts()]
    forbidden += [str(tree.root)]
    for text in forbidden:
        assert text not in printed, f"{text!r} was printed"


def test_a_real_dicom_with_a_tiff_preamble_goes_as_dicom_or_not_at_all(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    """Issue 11, item 3: pydicom's CT_small.dcm starts with a TIFF header; Leyr takes DICOM,
    Nymbl does not: neither may receive it labelled as a TIFF image."""
    pydicom_data = pytest.importorskip(
        "pydicom.data", reason="pydicom (the test extra) ships real DICOM files"
    )
    ct = Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes()
    assert ct[:4] == b"II*\x00"
    tree.drop("p_1/ct series.dcm", ct)
    tree.drop("12345/nymbl/ct series.dcm", ct)
    proc = daemon_process(make_config(tree, sandbox), command="once")
    assert proc.proc.wait(60) == 1  # one failed
    [done] = tree.receipts()
    assert (done["format"], done["target"], done["attempts"]) == ("application/dicom", "leyr", 1)
    [stored] = sandbox.documents()
    assert (stored.mime, stored.sha256, stored.api) == ("application/dicom", _sha(ct), "leyr")
    [failed] = tree.receipts("failed")
    assert failed["format"] == "application/dicom"
    assert failed["attempts"] == 0
    assert failed["error"]["kind"] == "unsupported_type"
    assert sandbox.requests("nymbl") == []
    assert sandbox.requests("token") == []
