"""Hostile inboxes: `ingestd run` as a process against links, pipes, devices, sockets, hard links,
odd names, empty and growing files, files that vanish, junk names, collisions and over-long names.

Every test also drops ordinary files in the same run and checks that they still reach done/
meanwhile: nothing hostile may block the flow. Waiting is always polling with a deadline.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import socket
import stat
import threading
import unicodedata
from collections.abc import Callable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd.sandbox import Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import docx, gif, pdf

pytestmark = pytest.mark.slow

Start = Callable[..., DaemonProcess]
RECEIPT = ".receipt.json"
LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) event=\w")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _start(tree: Tree, sandbox: Sandbox, daemon_process: Start, **config: Any) -> DaemonProcess:
    proc = daemon_process(make_config(tree, sandbox, **config))
    proc.wait_started()
    return proc


def _ordinary(tree: Tree, tag: str, count: int = 3, folder: str = "p_ok") -> dict[str, bytes]:
    """Well-behaved files dropped beside the hostile ones: they must get through meanwhile."""
    files = {}
    for n in range(count):
        rel = f"{folder}/{tag}-{n}.pdf"
        files[rel] = pdf(f"ordinary-{tag}-{n}", 5_000)
        tree.drop(rel, files[rel])
    return files


def _sources(tree: Tree, where: str = "done") -> set[str]:
    receipts = tree.all_receipts() if where == "all" else tree.receipts(where)
    return {r["source"] for r in receipts if "source" in r}  # not a stray one put there by hand


def _ordinary_done(tree: Tree, files: dict[str, bytes]) -> bool:
    return set(files) <= _sources(tree)


def _assert_ordinary(tree: Tree, sandbox: Sandbox, files: dict[str, bytes]) -> None:
    receipts = {r.get("source"): r for r in tree.receipts()}
    stored = {d.id: d for d in sandbox.documents()}
    for rel, data in files.items():
        receipt = receipts[rel]
        assert receipt["status"] == "done"
        assert stored[receipt["document_id"]].sha256 == _sha(data) == receipt["sha256"]
        assert (tree.done / rel).read_bytes() == data


def _assert_each_source_once(tree: Tree) -> None:
    counts = collections.Counter(r.get("source") for r in tree.all_receipts())
    assert all(n == 1 for n in counts.values()), counts


def _stored_hashes(sandbox: Sandbox) -> collections.Counter[str]:
    return collections.Counter(d.sha256 for d in sandbox.documents())


def _work_files(tree: Tree) -> list[Path]:
    work = tree.inbox / ".ingestd" / "work"
    if not work.exists():
        return []
    # Hidden names there are ingestd's own bookkeeping (its lease file), not claimed files.
    return [p for p in work.rglob("*") if not p.is_dir() and not p.name.startswith(".")]


def _bind_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path` (bound by its short name: sun_path holds 108 bytes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:
        os.chdir(path.parent)
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
    sock.listen(1)
    return sock


def _assert_log_clean(output: str, forbidden: list[str]) -> None:
    """No raw name and no raw control character; every line is one whole log event."""
    for text in forbidden:
        assert text not in output, f"{text!r} was printed"
    for char in ("\x1b", "\t", "\r", "\x0b", "\x0c"):
        assert char not in output, f"raw {char!r} was printed"
    for line in output.split("\n"):
        if line:
            assert LOG_LINE.match(line), f"not a whole log line: {line!r}"


# --- links, pipes, devices, sockets ---------------------------------------------------------


def test_symlinks_are_filed_as_links_and_never_followed(
    tree: Tree, sandbox: Sandbox, daemon_process: Start, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret_data = pdf("secret", 3_000)  # a real PDF: if a link were followed, it would upload
    secret.write_bytes(secret_data)
    secret_before = os.stat(secret)
    records = outside / "records"
    records.mkdir()
    behind = pdf("behind-a-folder-link", 3_000)
    (records / "chart.pdf").write_bytes(behind)

    proc = _start(tree, sandbox, daemon_process)
    (tree.inbox / "p_1").mkdir()
    links = {
        "p_1/passwd.pdf": str(secret),  # a secret outside the inbox
        "p_1/records": str(records),  # a folder outside the inbox
        "p_1/dangling.pdf": str(outside / "nowhere.pdf"),  # points at nothing
        "p_1/alias.pdf": "real.pdf",  # relative, to a file inside the inbox
    }
    for rel, target in links.items():
        (tree.inbox / rel).symlink_to(target)
    real = pdf("real", 4_000)
    tree.drop("p_1/real.pdf", real)
    ordinary = _ordinary(tree, "links")
    expected_done = {**ordinary, "p_1/real.pdf": real}

    wait_for(lambda: _sources(tree, "failed") == set(links) and _ordinary_done(tree, expected_done))
    _assert_ordinary(tree, sandbox, expected_done)
    for receipt in tree.receipts("failed"):
        assert receipt["error"]["kind"] == "not_a_regular_file", receipt
        assert receipt["attempts"] == 0
    for rel, target in links.items():
        moved = tree.failed / rel
        assert moved.is_symlink(), f"{rel}: the link itself is filed"
        assert os.readlink(moved) == target
        assert not os.path.lexists(tree.inbox / rel)
    # The targets are untouched and nothing behind a link reached the EHR.
    assert secret.read_bytes() == secret_data
    after = os.stat(secret)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        secret_before.st_ino,
        secret_before.st_mtime_ns,
        secret_before.st_ctime_ns,
    )
    assert (records / "chart.pdf").read_bytes() == behind
    hashes = _stored_hashes(sandbox)
    assert _sha(secret_data) not in hashes
    assert _sha(behind) not in hashes
    assert sorted(hashes) == sorted(_sha(d) for d in expected_done.values())
    _assert_each_source_once(tree)
    assert proc.stop() == 0


def test_a_symlink_as_patient_folder_is_filed_never_entered(
    tree: Tree, sandbox: Sandbox, daemon_process: Start, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    behind = pdf("behind-a-patient-link", 3_000)
    (elsewhere / "chart.pdf").write_bytes(behind)
    proc = _start(tree, sandbox, daemon_process)
    (tree.inbox / "p_link").symlink_to(elsewhere)
    ordinary = _ordinary(tree, "patient-link")

    wait_for(lambda: _sources(tree, "failed") == {"p_link"} and _ordinary_done(tree, ordinary))
    _assert_ordinary(tree, sandbox, ordinary)
    [receipt] = tree.receipts("failed")
    # A link in the inbox root: not a regular file (it is never opened to find out more).
    assert receipt["error"]["kind"] == "not_a_regular_file"
    assert (tree.failed / "p_link").is_symlink()
    assert (elsewhere / "chart.pdf").read_bytes() == behind
    assert _sha(behind) not in _stored_hashes(sandbox)
    assert not (tree.done / "p_link").exists()
    assert proc.stop() == 0


def _wchan(thread: threading.Thread) -> str:
    """Where in the kernel a thread of this process is waiting."""
    try:
        return Path(f"/proc/self/task/{thread.native_id}/wchan").read_text()
    except OSError:
        return ""


def test_fifo_and_socket_are_filed_without_being_opened(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = _start(tree, sandbox, daemon_process)
    folder = tree.inbox / "p_1"
    folder.mkdir()
    os.mkfifo(folder / "pipe.pdf")  # no writer: opening it to read would block a reader
    # A second FIFO with a writer blocked in open(): it returns only once someone opens the
    # FIFO for reading, which tells whether ingestd ever did. The writer opens it by a name
    # outside the inbox and is blocked before the inbox name (a hard link) appears.
    outside = tree.root / "fifo-writer.pdf"
    os.mkfifo(outside)
    we_opened = threading.Event()
    opened_by_other: list[bool] = []

    def blocked_writer() -> None:
        fd = os.open(outside, os.O_WRONLY)
        opened_by_other.append(not we_opened.is_set())
        os.close(fd)

    writer = threading.Thread(target=blocked_writer, daemon=True)
    writer.start()
    try:
        wait_for(lambda: _wchan(writer) == "wait_for_partner", timeout=5)
        os.link(outside, folder / "watched.pdf")
        sock = _bind_unix_socket(folder / "sock.pdf")
        ordinary = _ordinary(tree, "fifo")
        hostile = {"p_1/pipe.pdf", "p_1/watched.pdf", "p_1/sock.pdf"}
        try:
            wait_for(lambda: _sources(tree, "failed") == hostile and _ordinary_done(tree, ordinary))
        finally:
            sock.close()
        _assert_ordinary(tree, sandbox, ordinary)
        kinds = {r["source"]: r["error"]["kind"] for r in tree.receipts("failed")}
        assert kinds == dict.fromkeys(hostile, "not_a_regular_file")
        assert all(r["attempts"] == 0 for r in tree.receipts("failed"))
        for name, is_kind in [
            ("pipe.pdf", stat.S_ISFIFO),
            ("watched.pdf", stat.S_ISFIFO),
            ("sock.pdf", stat.S_ISSOCK),
        ]:
            assert is_kind(os.lstat(tree.failed / "p_1" / name).st_mode), name
        assert opened_by_other == [], "ingestd opened the FIFO"
    finally:
        we_opened.set()
        fd = os.open(outside, os.O_RDONLY | os.O_NONBLOCK)  # releases the blocked writer
        writer.join(5)
        os.close(fd)
    assert opened_by_other == [False]
    assert proc.stop() == 0


def test_character_device_is_filed_without_being_opened(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    folder = tree.inbox / "p_1"
    folder.mkdir()
    device = folder / "null.pdf"
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc.strerror}")
    proc = _start(tree, sandbox, daemon_process)
    ordinary = _ordinary(tree, "device")

    wait_for(
        lambda: _sources(tree, "failed") == {"p_1/null.pdf"} and _ordinary_done(tree, ordinary)
    )
    _assert_ordinary(tree, sandbox, ordinary)
    [receipt] = tree.receipts("failed")
    assert receipt["error"]["kind"] == "not_a_regular_file"
    assert receipt["attempts"] == 0
    filed = os.lstat(tree.failed / "p_1" / "null.pdf")
    assert stat.S_ISCHR(filed.st_mode)
    assert filed.st_rdev == os.makedev(1, 3)
    assert proc.stop() == 0


# --- hard links -----------------------------------------------------------------------------


def test_hard_links_are_separate_files_each_uploaded_once(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = _start(tree, sandbox, daemon_process)
    data = pdf("twin", 8_000)
    for folder in ("p_1", "p_2"):
        (tree.inbox / folder).mkdir()
    hidden = tree.inbox / "p_1" / ".twin.writing"
    hidden.write_bytes(data)
    names = ["p_1/twin-a.pdf", "p_1/twin-b.pdf", "p_2/twin-c.pdf"]
    for rel in names:
        os.link(hidden, tree.inbox / rel)  # one inode, three names
    hidden.unlink()
    ordinary = _ordinary(tree, "hardlinks")

    wait_for(lambda: _ordinary_done(tree, {**ordinary, **dict.fromkeys(names, data)}))
    _assert_ordinary(tree, sandbox, {**ordinary, **dict.fromkeys(names, data)})
    # Each name is its own file: uploaded once per name, filed once per name.
    receipts = [r for r in tree.all_receipts() if r["source"] in names]
    assert sorted(r["source"] for r in receipts) == names
    assert all(r["status"] == "done" and r["sha256"] == _sha(data) for r in receipts)
    assert len({r["document_id"] for r in receipts}) == 3
    twins = [d for d in sandbox.documents() if d.sha256 == _sha(data)]
    assert sorted((d.patient_id, d.name) for d in twins) == [
        ("p_1", "twin-a"),
        ("p_1", "twin-b"),
        ("p_2", "twin-c"),
    ]
    for rel in names:
        assert (tree.done / rel).read_bytes() == data
        assert not os.path.lexists(tree.inbox / rel)
    _assert_each_source_once(tree)
    assert proc.stop() == 0


# --- names ----------------------------------------------------------------------------------


def _write_raw(tree: Tree, rel: bytes | str, data: bytes) -> None:
    """Drop an inbox file by its bytes path (the name need not be valid UTF-8 and may be too
    long for `Tree.drop`'s temporary name): written under a short hidden name, then renamed."""
    path = os.fsencode(tree.inbox) + b"/" + os.fsencode(rel)
    folder = path.rsplit(b"/", 1)[0]
    os.makedirs(folder, exist_ok=True)
    tmp = folder + b"/.raw.writing"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _names_reach_done(
    tree: Tree,
    sandbox: Sandbox,
    daemon_process: Start,
    names: list[bytes],
    forbidden: list[str],
    timeout: float = 20.0,
) -> None:
    """Each inbox path in `names` reaches done/ with `source` byte for byte, its own bytes
    uploaded, and the log holds neither the names nor a raw control character."""
    proc = _start(tree, sandbox, daemon_process)
    files = {rel: pdf(f"odd-{n}", 4_000) for n, rel in enumerate(names)}
    for rel, data in files.items():
        _write_raw(tree, rel, data)
    ordinary = _ordinary(tree, "names")

    def all_filed() -> bool:
        filed = {os.fsencode(s) for s in _sources(tree, "all")}
        return filed >= set(files) and _ordinary_done(tree, ordinary)

    wait_for(all_filed, timeout)
    _assert_ordinary(tree, sandbox, ordinary)
    stored = {d.id: d for d in sandbox.documents()}
    # Receipts are JSON: a byte that is not UTF-8 is written as a surrogate escape (\udcXX),
    # which os.fsencode turns back into the original byte.
    by_source = {os.fsencode(r["source"]): r for r in tree.all_receipts()}
    for rel, data in files.items():
        receipt = by_source[rel]  # `source` is the inbox path, byte for byte (no normalising)
        assert receipt["status"] == "done", (rel, receipt.get("error"))
        document = stored[receipt["document_id"]]
        assert document.sha256 == _sha(data) == receipt["sha256"]
        document.name.encode("utf-8")  # what the EHR was sent is valid Unicode
        folder_bytes, name_bytes = rel.rsplit(b"/", 1)
        name = os.fsdecode(name_bytes)
        if len(name_bytes) + len(RECEIPT) <= 255:
            assert receipt["file"] == name
        else:
            assert len(os.fsencode(receipt["file"] + RECEIPT)) <= 255
        filed = tree.done / os.fsdecode(folder_bytes) / receipt["file"]
        assert filed.read_bytes() == data
        assert filed.with_name(filed.name + RECEIPT).exists()
        assert not os.path.lexists(os.fsencode(tree.inbox) + b"/" + rel)
    _assert_each_source_once(tree)
    assert proc.stop() == 0
    _assert_log_clean(proc.output(), forbidden)


def test_odd_names_are_filed_byte_for_byte_and_never_logged_raw(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    nfc = unicodedata.normalize("NFC", "Ärende.pdf")
    nfd = unicodedata.normalize("NFD", "Ärende.pdf")
    assert nfc != nfd
    names = [
        "p_names/Spacey  Name  Zq.pdf",
        f"p_names/{nfc}",
        f"p_names/{nfd}",  # a Mac wrote this one: both stay, each as written
        "p_names/Newline\nZebra.pdf",
        "p_names/Tabbed\tZulu.pdf",
        "p_names/Escaped\x1b[31mZorro\x07.pdf",
        "p_names/" + "Q" * 246 + ".pdf",  # 250 bytes
        # Nymbl puts the name in a multipart header: quotes and line breaks must not break it.
        '12345/nymbl/Quoted "Yak" Name.pdf',
        "12345/nymbl/Crlf\r\nX-Injected: yes.pdf",
    ]
    forbidden = ["Spacey", "rende", "Newline", "Zebra", "Tabbed", "Zulu", "Escaped", "Zorro"]
    forbidden += ["QQQQQQQQ", "Quoted", "Yak", "Crlf", "Injected", "p_names", "12345"]
    _names_reach_done(tree, sandbox, daemon_process, [os.fsencode(n) for n in names], forbidden)


def test_a_name_that_is_not_utf8_is_filed_byte_for_byte(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    names = [
        b"p_names/Nonutf-caf\xe9.pdf",  # Latin-1 from an old SMB client
        b"12345/nymbl/Nonutf-r\xe9ferral.pdf",
    ]
    forbidden = ["Nonutf", "p_names", "12345"]
    _names_reach_done(tree, sandbox, daemon_process, names, forbidden, timeout=10)


def test_root_files_go_to_failed_and_junk_names_are_never_taken(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    junk = [
        "p_1/.x.pdf",
        "p_1/a.tmp",
        "p_1/b.part",
        "p_1/c.crdownload",
        "p_1/~$d.docx",
        "p_1/.~lock.e.docx#",
        "p_1/Thumbs.db",
        "p_1/desktop.ini",
        "p_1/.hidden/f.pdf",
        "p_1/sub/.hidden/g.pdf",
        "Thumbs.db",  # junk in the inbox root is junk, not a file without a patient
        ".DS_Store",
    ]
    contents = {rel: pdf(f"junk-{n}") for n, rel in enumerate(junk)}
    contents["p_1/~$d.docx"] = docx("junk-lock")

    def write_junk(names: list[str]) -> None:
        for rel in names:
            path = tree.inbox / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(contents[rel])

    write_junk(junk[::2])  # half before start (found by the start-up scan) ...
    early = _ordinary(tree, "junk-early", folder="p_1")
    proc = _start(tree, sandbox, daemon_process)
    write_junk(junk[1::2])  # ... half while running (found by events)
    loose = pdf("loose")
    tree.drop("loose.pdf", loose)
    late = _ordinary(tree, "junk-late", folder="p_1")
    ordinary = {**early, **late}

    wait_for(lambda: _sources(tree, "failed") == {"loose.pdf"} and _ordinary_done(tree, ordinary))
    _assert_ordinary(tree, sandbox, ordinary)
    [receipt] = tree.receipts("failed")
    assert receipt["error"]["kind"] == "no_patient_folder"
    assert receipt["attempts"] == 0
    assert (tree.failed / "loose.pdf").read_bytes() == loose
    # The late ordinary files were written after every junk name and are done: the junk had
    # its chance to be taken. It is all still there, untouched, without a receipt.
    for rel, data in contents.items():
        assert (tree.inbox / rel).read_bytes() == data, rel
    assert _sources(tree, "all") == set(ordinary) | {"loose.pdf"}
    assert sorted(_stored_hashes(sandbox)) == sorted(_sha(d) for d in ordinary.values())
    assert proc.stop() == 0


# --- empty, growing and vanishing files -----------------------------------------------------


def test_empty_files_wait_then_fail_unless_they_get_content(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = _start(
        tree, sandbox, daemon_process, watch={"settle_seconds": 0.2, "empty_fail_seconds": 3}
    )
    folder = tree.inbox / "p_1"
    folder.mkdir()
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "filled.pdf").write_bytes(b"")
    ordinary = _ordinary(tree, "empty", folder="p_1")

    wait_for(lambda: _ordinary_done(tree, ordinary))
    # At first both empty files wait in the inbox.
    assert (folder / "empty.pdf").exists()
    assert (folder / "filled.pdf").exists()
    assert _sources(tree, "all") == set(ordinary)
    content = pdf("filled-late", 6_000)
    with (folder / "filled.pdf").open("ab") as handle:  # the scanner finally writes it
        handle.write(content)

    wait_for(lambda: len(tree.all_receipts()) == len(ordinary) + 2, timeout=20)
    _assert_ordinary(tree, sandbox, {**ordinary, "p_1/filled.pdf": content})
    [failed] = tree.receipts("failed")
    assert failed["source"] == "p_1/empty.pdf"
    assert failed["error"]["kind"] == "empty"
    assert failed["attempts"] == 0
    assert (tree.failed / "p_1" / "empty.pdf").read_bytes() == b""
    waited = _seconds_between(failed["received_at"], failed["finished_at"])
    assert waited >= 2.9, f"an empty file failed after {waited:.1f} s, before its age of 3 s"
    filled = next(r for r in tree.receipts() if r["source"] == "p_1/filled.pdf")
    assert filled["sha256"] == _sha(content)
    assert filled["size"] == len(content)
    assert _sha(b"") not in _stored_hashes(sandbox)
    assert proc.stop() == 0


def _seconds_between(start: str, end: str) -> float:
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def test_a_file_written_in_bursts_is_uploaded_once_and_whole(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    proc = _start(tree, sandbox, daemon_process, settle=0.3)
    whole = pdf("bursts", 300_000)
    chunks = [whole[i : i + 60_000] for i in range(0, len(whole), 60_000)]
    others_seen = threading.Event()
    pace = threading.Event()  # never set: only the writer's own pauses

    def writer() -> None:
        path = tree.inbox / "p_1" / "bursts.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for n, chunk in enumerate(chunks):
                if n == len(chunks) - 1:
                    # Hold the last burst until the test has seen the ordinary files through.
                    others_seen.wait(30)
                handle.write(chunk)
                handle.flush()
                pace.wait(0.6)  # the writer's pause: twice the settle time

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ordinary = _ordinary(tree, "bursts")
        wait_for(lambda: _ordinary_done(tree, ordinary))
        # Quiet for longer than the settle time, but still open for writing: not taken yet.
        assert "p_1/bursts.pdf" not in _sources(tree, "all")
        assert not [d for d in sandbox.documents() if d.name == "bursts"]
    finally:
        others_seen.set()
        thread.join(30)

    wait_for(lambda: "p_1/bursts.pdf" in _sources(tree, "all"))
    # A later file done means any second take of the grown file would have happened too.
    after = _ordinary(tree, "after-bursts")
    wait_for(lambda: _ordinary_done(tree, after))
    _assert_ordinary(tree, sandbox, {**ordinary, **after, "p_1/bursts.pdf": whole})
    uploads = [d for d in sandbox.documents() if d.name == "bursts"]
    assert [d.sha256 for d in uploads] == [_sha(whole)], "uploaded half-written or twice"
    _assert_each_source_once(tree)
    assert proc.stop() == 0


def test_a_file_that_vanishes_before_it_is_taken_leaves_no_receipt(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    # Files in p_slow settle for 2 s: long enough to delete one after it was surely seen.
    watch = {"settle_seconds": 0.2, "sources": [{"folder": "p_slow", "settle_seconds": 2.0}]}
    proc = _start(tree, sandbox, daemon_process, watch=watch)
    doomed = pdf("doomed")
    tree.drop("p_slow/doomed.pdf", doomed)
    ordinary = _ordinary(tree, "vanish")
    wait_for(lambda: _ordinary_done(tree, ordinary))  # the loop has seen doomed.pdf by now
    (tree.inbox / "p_slow" / "doomed.pdf").unlink()
    # Settles 2 s after it is first seen, so its own look at the vanished path is over by then.
    sentinel = pdf("sentinel")
    tree.drop("p_slow/sentinel.pdf", sentinel)
    wait_for(lambda: "p_slow/sentinel.pdf" in _sources(tree))

    # Churn: files deleted at staggered moments around their settle time. Each one is either
    # deleted by us (then no receipt, no upload) or was taken first (then done, exactly once).
    churn = {f"p_churn/c-{n}.pdf": pdf(f"churn-{n}", 2_000) for n in range(12)}
    for rel, data in churn.items():
        tree.drop(rel, data)
    pace = threading.Event()  # never set: the deleter's own pace
    deleted, taken = set(), set()
    for rel in churn:
        try:
            (tree.inbox / rel).unlink()
            deleted.add(rel)
        except FileNotFoundError:
            taken.add(rel)
        pace.wait(0.05)
    last = pdf("churn-last")
    tree.drop("p_churn/last.pdf", last)
    wait_for(lambda: (taken | {"p_churn/last.pdf"}) <= _sources(tree))

    _assert_ordinary(tree, sandbox, {**ordinary, "p_slow/sentinel.pdf": sentinel})
    _assert_ordinary(
        tree, sandbox, {**{rel: churn[rel] for rel in taken}, "p_churn/last.pdf": last}
    )
    assert _sources(tree, "all") == set(ordinary) | taken | {
        "p_slow/sentinel.pdf",
        "p_churn/last.pdf",
    }
    hashes = _stored_hashes(sandbox)
    assert _sha(doomed) not in hashes
    assert not [rel for rel in deleted if _sha(churn[rel]) in hashes]
    assert _work_files(tree) == []
    assert proc.stop() == 0
    assert "worker_error" not in proc.output()


# --- filing ---------------------------------------------------------------------------------


def test_names_taken_by_hand_in_done_and_failed_are_never_overwritten(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    (tree.done / "p_1").mkdir(parents=True)
    (tree.failed / "p_1").mkdir(parents=True)
    by_hand = {
        tree.done / "p_1" / "scan.pdf": b"put there by hand",
        tree.done / "p_1" / ("letter.pdf" + RECEIPT): b'{"by": "hand"}',  # a stray receipt
        tree.failed / "p_1" / "anim.gif": b"also by hand",
    }
    for path, data in by_hand.items():
        path.write_bytes(data)
    proc = _start(tree, sandbox, daemon_process)
    new = {"p_1/scan.pdf": pdf("new-scan"), "p_1/letter.pdf": pdf("new-letter")}
    new_gif = gif("new-anim")
    for rel, data in new.items():
        tree.drop(rel, data)
    tree.drop("p_1/anim.gif", new_gif)
    ordinary = _ordinary(tree, "collide")

    wait_for(lambda: _ordinary_done(tree, {**ordinary, **new}) and tree.receipts("failed"))
    for path, data in by_hand.items():
        assert path.read_bytes() == data, f"{path.name} was overwritten"
    files = {r["source"]: r["file"] for r in tree.all_receipts() if "source" in r}
    assert files["p_1/scan.pdf"] == "scan (1).pdf"
    assert files["p_1/letter.pdf"] == "letter (1).pdf"
    assert files["p_1/anim.gif"] == "anim (1).gif"
    assert (tree.done / "p_1" / "scan (1).pdf").read_bytes() == new["p_1/scan.pdf"]
    assert (tree.done / "p_1" / "letter (1).pdf").read_bytes() == new["p_1/letter.pdf"]
    assert (tree.failed / "p_1" / "anim (1).gif").read_bytes() == new_gif
    for name in ("scan (1).pdf", "letter (1).pdf"):
        assert (tree.done / "p_1" / (name + RECEIPT)).exists()
    assert (tree.failed / "p_1" / ("anim (1).gif" + RECEIPT)).exists()
    stored = {d.id: d.sha256 for d in sandbox.documents()}
    for receipt in tree.receipts():
        if receipt.get("source") in new:
            assert stored[receipt["document_id"]] == _sha(new[receipt["source"]])
    _assert_ordinary(tree, sandbox, ordinary)
    assert proc.stop() == 0


def test_names_too_long_for_their_receipt_are_shortened(
    tree: Tree, sandbox: Sandbox, daemon_process: Start
) -> None:
    names = [
        "R" * 251 + ".pdf",  # 255 bytes, the longest a name can be
        "Ä" * 124 + ".pdf",  # 252 bytes of two-byte characters: never cut one in half
        "S" * 240 + "-one.pdf",  # these two are the same once shortened
        "S" * 240 + "-two.pdf",
    ]
    proc = _start(tree, sandbox, daemon_process)
    files = {f"p_1/{name}": pdf(f"long-{n}", 3_000) for n, name in enumerate(names)}
    for rel, data in files.items():
        _write_raw(tree, rel, data)
    ordinary = _ordinary(tree, "long")

    wait_for(lambda: _ordinary_done(tree, {**ordinary, **files}))
    _assert_ordinary(tree, sandbox, ordinary)
    receipts = {r["source"]: r for r in tree.receipts()}
    stored = {d.id: d.sha256 for d in sandbox.documents()}
    shortened = []
    for rel, data in files.items():
        receipt = receipts[rel]  # the source keeps the whole name
        name = receipt["file"]
        assert name != PurePosixPath(rel).name
        assert len(os.fsencode(name + RECEIPT)) <= 255
        name.encode("utf-8")  # whole characters only: no lone surrogate from a cut
        assert name.endswith(".pdf")
        assert (tree.done / "p_1" / name).read_bytes() == data
        assert (tree.done / "p_1" / (name + RECEIPT)).exists()
        assert stored[receipt["document_id"]] == _sha(data)
        shortened.append(name)
    assert len(set(shortened)) == len(names)
    assert any(name.endswith(" (1).pdf") for name in shortened)
    _assert_each_source_once(tree)
    assert proc.stop() == 0
