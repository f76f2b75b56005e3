"""Every failure kind's receipt carries the whole contract (issue 11, items 6 and 7).

One daemon, one sandbox with a proxy's lower body limit in front of it, and a file for each
kind the daemon can produce. Each receipt must hold every contract field with the right type:
`size` always (lstat's for what is never opened), `sha256` unless the bytes could not be read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd import content
from ingestd.config.load import load_config
from ingestd.daemon.loop import Daemon
from ingestd.sandbox import Sandbox
from ingestd.targets.leyr import LeyrTarget
from tests.conftest import Tree, make_config, wait_for
from tests.samples import SAMPLES, gif, pdf

pytestmark = pytest.mark.slow

KiB = 1024
PROXY_LIMIT = 150 * KiB  # the proxy in front of the EHR
LEYR_MAX_BYTES = 200 * KiB  # what the target is configured to send: more than the proxy takes
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

RULES: list[dict[str, Any]] = [
    {"name": "refuse", "match": {"filename": "refuse-*"}, "fail": "refused by rule"},
    {
        "name": "to nymbl",
        "match": {"path": "nymbl/**"},
        "set": {"title": "{stem}", "type": "Referral", "target": "nymbl"},
    },
    {
        "name": "named",
        "match": {"filename": "*.*"},
        "set": {"title": "{stem}", "type": "Scan", "target": "leyr"},
    },
]


def _files(tree: Tree) -> dict[str, str]:
    """Drop one file per failure kind; returns inbox path -> expected kind."""
    expected: dict[str, str] = {}

    def drop(rel: str, data: bytes, kind: str) -> None:
        tree.drop(rel, data)
        expected[rel] = kind

    drop("root.pdf", pdf("root"), "no_patient_folder")
    drop("p_1/nymbl/letter.pdf", pdf("letter"), "invalid_patient_id")  # Nymbl: digits only
    drop("p_1/no-extension", pdf("no rule"), "no_rule")
    drop("p_1/refuse-me.pdf", pdf("refuse"), "rule_failed")
    drop("12345/nymbl/anim.gif", gif("nymbl"), "unsupported_type")
    drop("p_1/big.pdf", pdf("big", size=LEYR_MAX_BYTES + KiB), "too_large")
    drop("p_2/proxy.pdf", pdf("proxy", size=120 * KiB), "too_large")  # 413: ~160 KiB as JSON
    drop("p_1/empty.pdf", b"", "empty")
    drop("p_1/unreadable.pdf", pdf("unreadable"), "unreadable")
    drop("p_1/anim.gif", gif("leyr"), "rejected")  # accepted here, refused by the EHR (415)
    drop("p_404/lost.pdf", pdf("lost"), "patient_not_found")
    (tree.inbox / "p_1" / "link.pdf").symlink_to(tree.inbox / "p_1" / "refuse-me.pdf")
    expected["p_1/link.pdf"] = "not_a_regular_file"
    os.mkfifo(tree.inbox / "p_1" / "fifo.pdf")
    expected["p_1/fifo.pdf"] = "not_a_regular_file"
    return expected


@pytest.fixture
def proxied() -> Iterator[Sandbox]:
    sb = Sandbox(
        port=0, known_patients=["p_1", "p_2", "12345"], proxy_body_limit=PROXY_LIMIT
    ).start()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def unreadable_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files named *unreadable* cannot be opened. As root, chmod 000 does not stop a read, so
    os.open refuses them the way the kernel would for another user."""
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if "unreadable" in os.fsdecode(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(content.os, "open", refusing_open)


def test_every_failure_kind_has_a_receipt_with_every_contract_field(
    tree: Tree, proxied: Sandbox, unreadable_files: None
) -> None:
    config = make_config(
        tree,
        proxied,
        rules=RULES,
        watch={"settle_seconds": 0.2, "empty_fail_seconds": 1},
    )
    text = config.read_text().replace(
        "kind: leyr\n",
        f"kind: leyr\n    max_bytes: {LEYR_MAX_BYTES}\n    accept: "
        f"[{', '.join(sorted(LeyrTarget.default_accept | {'image/gif'}))}]\n",
    )
    config.write_text(text)
    expected = _files(tree)
    contents = {
        rel: (tree.inbox / rel).read_bytes()
        for rel in expected
        if (tree.inbox / rel).is_file() and not (tree.inbox / rel).is_symlink()
        and "unreadable" not in rel
    }  # fmt: skip
    daemon = Daemon(load_config(str(config)))
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for(lambda: len(tree.receipts("failed")) == len(expected), timeout=30)
    finally:
        daemon.request_stop()
        runner.join(30)
        daemon.journal.close()
    receipts = {r["source"]: r for r in tree.receipts("failed")}
    assert {source: r["error"]["kind"] for source, r in receipts.items()} == expected
    assert tree.receipts("done") == []
    assert proxied.documents() == []
    for source, receipt in receipts.items():
        _check_contract(receipt, source, contents.get(source), tree)
    # Refused by the EHR: one request each, with the HTTP status; everything else sent nothing.
    sent = {r["source"]: r["attempts"] for r in receipts.values() if r["attempts"]}
    assert sent == {"p_2/proxy.pdf": 1, "p_1/anim.gif": 1, "p_404/lost.pdf": 1}
    assert receipts["p_1/anim.gif"]["error"]["http_status"] == 415
    assert receipts["p_404/lost.pdf"]["error"]["http_status"] == 404
    # A 413 is too_large, with the status and what to do about it.
    proxy_error = receipts["p_2/proxy.pdf"]["error"]
    assert proxy_error["http_status"] == 413
    assert "max_bytes" in proxy_error["message"]
    assert "4/3" in proxy_error["message"]
    assert "http_status" not in receipts["p_1/big.pdf"]["error"]  # refused here, before a request


def _check_contract(receipt: dict[str, Any], source: str, data: bytes | None, tree: Tree) -> None:
    where = f"{source}: {receipt}"
    strings_or_null = ("target", "patient_id", "format", "title", "type", "rule")
    assert receipt["status"] == "failed", where
    assert "document_id" not in receipt, where
    for key in strings_or_null:
        assert key in receipt, (key, where)
        assert isinstance(receipt[key], str | None), (key, where)
    assert receipt["source"] == source, where
    assert isinstance(receipt["file"], str), where
    assert isinstance(receipt["attempts"], int), where
    assert ISO_UTC.fullmatch(receipt["received_at"]), where
    assert ISO_UTC.fullmatch(receipt["finished_at"]), where
    error = receipt["error"]
    assert set(error) <= {"kind", "message", "http_status"}, where
    assert isinstance(error["message"], str), where
    assert error["message"], where
    stored = tree.failed / Path(source).parent / receipt["file"]
    assert isinstance(receipt["size"], int), where
    assert receipt["size"] == os.lstat(stored).st_size, where
    if data is not None:
        # Its bytes could be read: the receipt says what they were.
        assert receipt["sha256"] == hashlib.sha256(data).hexdigest(), where
        assert receipt["size"] == len(data), where
    else:
        # A link, a FIFO, a file that cannot be opened: never read, so no hash.
        assert receipt["sha256"] is None, where
    if data and receipt["error"]["kind"] not in ("no_patient_folder",):
        assert receipt["format"] in SAMPLES or receipt["format"] == "image/gif", where
