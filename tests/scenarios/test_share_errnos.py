"""Network shares (issue 12): every error a dying share gives, on the polling, scanning, claiming
and filing paths; claim names any file system keeps; moves without hard links.

The errors are injected by monkeypatching the os calls (a real dying share is in
tests/scenarios/test_shares.py); files and folders are real temporary ones.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd.config.load import load_config
from ingestd.content import Snapshot
from ingestd.daemon.loop import Daemon
from ingestd.filing import moves as shares
from ingestd.filing.places import place
from ingestd.filing.receipts import write_receipt
from ingestd.inbox.claims import WORK_DIR, Claimer, source_of, work_name
from ingestd.inbox.scan import INBOX_ROOT, scan
from ingestd.inbox.settle import Ready
from ingestd.journal import Journal, Row
from ingestd.observe.logs import Masker
from ingestd.sandbox import Sandbox
from tests.conftest import Tree, make_config
from tests.samples import pdf

SHARE_ERRNOS = [errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT]
SHARE_ERRNOS.append(errno.ENODEV)
IDS = [errno.errorcode[e] for e in SHARE_ERRNOS]
SMB_REFUSES = set('\\/:*?"<>|%')


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={name}" in r.getMessage()]


def _failing(real: Any, bad: Path, code: int) -> Any:
    """`real` (an os call taking paths first) that fails with `code` for a path at or below
    `bad`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)):
                target = Path(os.fsdecode(arg))
                if target == bad or bad in target.parents:
                    raise OSError(code, os.strerror(code), str(arg))
        return real(*args, **kwargs)

    return call


@pytest.fixture
def daemon(tree: Tree, sandbox: Sandbox) -> Iterator[Daemon]:
    watch = {"poll": True, "settle_seconds": 0.1, "scan_interval_seconds": 5}
    d = Daemon(load_config(str(make_config(tree, sandbox, watch=watch))))
    try:
        yield d
    finally:
        d.journal.close()


# --- polling and scanning -----------------------------------------------------------------


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_a_polled_folder_that_stops_answering_is_paused_once_and_resumed_with_a_scan(
    daemon: Daemon,
    tree: Tree,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for folder in ("p_1", "p_2"):
        (tree.inbox / folder).mkdir()
    list(daemon.intake._scan())
    assert daemon.intake.folders._polled == {PurePosixPath("p_1"), PurePosixPath("p_2")}
    dead = tree.inbox / "p_1"
    monkeypatch.setattr(os, "scandir", _failing(os.scandir, dead, code))
    monkeypatch.setattr(os, "stat", _failing(os.stat, dead, code))
    tree.drop("p_2/other.pdf", pdf("other"))
    for _ in range(3):
        daemon.intake.check_folders()  # what crashed the daemon: is_dir() raising ENOTCONN
    assert daemon.intake.folders.availability.is_down(PurePosixPath("p_1"))
    assert not daemon.intake.folders.availability.inbox_down()
    assert len(_events(caplog, "folder_unavailable")) == 1
    assert f"errno={errno.errorcode[code]}" in _events(caplog, "folder_unavailable")[0]
    assert "p_1" not in _events(caplog, "folder_unavailable")[0]  # masked: a patient id
    assert PurePosixPath("p_2/other.pdf") in daemon.intake.settler._pending  # the others go on
    snap = daemon.snapshot()
    assert not snap.healthy
    assert snap.folders_down == 1
    assert snap.inbox_up
    # It answers again: resumed with a scan of it, which finds what arrived meanwhile.
    monkeypatch.undo()
    tree.drop("p_1/meanwhile.pdf", pdf("meanwhile"))
    daemon.intake.folders.availability._down[PurePosixPath("p_1")].retry_at = 0.0
    daemon.intake.check_folders()
    assert len(_events(caplog, "folder_available")) == 1
    daemon.intake.advance_scans()
    assert PurePosixPath("p_1/meanwhile.pdf") in daemon.intake.settler._pending
    assert daemon.snapshot().healthy or daemon.snapshot().folders_down == 0


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_an_inbox_that_stops_answering_is_one_outage_not_one_per_folder(
    daemon: Daemon,
    tree: Tree,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for n in range(5):
        (tree.inbox / f"p_{n}").mkdir()
    list(daemon.intake._scan())
    for call in ("scandir", "stat", "lstat"):
        monkeypatch.setattr(os, call, _failing(getattr(os, call), tree.inbox, code))
    daemon.intake.check_folders()
    daemon.intake._scans.append((daemon.intake._scan(), True))
    daemon.intake.advance_scans()  # a scan that meets the dead inbox does not raise either
    assert daemon.intake.folders.availability.inbox_down()
    assert len(_events(caplog, "folder_unavailable")) == 1
    assert "folder=." in _events(caplog, "folder_unavailable")[0]
    assert not daemon.snapshot().inbox_up
    assert not daemon.snapshot().healthy
    monkeypatch.undo()
    tree.drop("p_3/meanwhile.pdf", pdf("meanwhile"))
    daemon.intake.folders.availability._down[INBOX_ROOT].retry_at = 0.0
    daemon.intake.check_folders()
    assert not daemon.intake.folders.availability.inbox_down()
    while daemon.intake._scans:
        daemon.intake.advance_scans()
    assert PurePosixPath("p_3/meanwhile.pdf") in daemon.intake.settler._pending


def test_a_cleanly_unmounted_inbox_takes_the_same_path(
    daemon: Daemon, tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    work = tree.inbox / WORK_DIR / daemon.claimer.instance
    hidden = work.with_name("moved-away")
    work.rename(hidden)  # what an unmount leaves: a bare mount point
    daemon.intake.folders._inbox_was_mount = True  # it was one at start-up, and is not one now
    daemon.intake.check_folders()
    daemon.intake.check_folders()
    [line] = _events(caplog, "folder_unavailable")
    assert "the inbox folder is missing" in line
    assert not work.exists()  # no work folder built on the bare mount point
    hidden.rename(work)
    daemon.intake.folders.availability._down[INBOX_ROOT].retry_at = 0.0
    daemon.intake.check_folders()
    assert not daemon.intake.folders.availability.inbox_down()
    assert _events(caplog, "folder_available")


def test_an_emptied_inbox_that_is_no_mount_point_gets_its_work_folder_back(
    daemon: Daemon, tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    (tree.inbox / WORK_DIR / daemon.claimer.instance).rmdir()
    daemon.intake.check_folders()
    assert (tree.inbox / WORK_DIR / daemon.claimer.instance).is_dir()
    assert not _events(caplog, "folder_unavailable")
    assert _events(caplog, "work_folder_made")


def test_the_backoff_grows_and_is_capped() -> None:
    from ingestd.inbox.availability import BACKOFF_MAX_SECONDS, Availability

    now = [100.0]
    availability = Availability(describe=str, clock=lambda: now[0])
    rel = PurePosixPath("p_1")
    waits = []
    for _ in range(6):
        availability.failed(rel, OSError(errno.EIO, "x"))
        waits.append(availability._down[rel].retry_at - now[0])
    assert waits[0] < waits[1] < waits[2]
    assert max(waits) == BACKOFF_MAX_SECONDS
    assert availability.due() == []


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_scan_reports_a_folder_that_does_not_answer_and_lists_the_rest(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in ("a/1.pdf", "b/2.pdf"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    monkeypatch.setattr(os, "scandir", _failing(os.scandir, tmp_path / "a", code))
    errors: list[tuple[PurePosixPath, int | None]] = []
    found = list(scan(tmp_path, on_error=lambda rel, exc: errors.append((rel, exc.errno))))
    assert found == [PurePosixPath("b/2.pdf")]
    assert errors == [(PurePosixPath("a"), code)]
    with pytest.raises(OSError) as raised:  # noqa: PT011 - the errno is checked below
        list(scan(tmp_path))  # without on_error: raised, never silently skipped
    assert raised.value.errno == code


# --- claiming -----------------------------------------------------------------------------


def _claimer(tmp_path: Path) -> Claimer:
    claimer = Claimer(tmp_path / "inbox", Journal(tmp_path / "j.sqlite"), "me", Masker(b"k"))
    (tmp_path / "inbox" / "leyrpat").mkdir(parents=True)
    claimer.prepare()
    return claimer


def _ready(claimer: Claimer, rel: str, data: bytes = b"%PDF-1.4 x") -> Ready:
    path = claimer.inbox / rel
    path.write_bytes(data)
    return Ready(PurePosixPath(rel), time.time(), Snapshot.of(path.stat()))


def test_work_names_survive_smb_and_url_decoding() -> None:
    for rel in ("leyrpat/file.pdf", "se_personal_number:19121212-1212/a b%2F.pdf", "å/ü?.tif"):
        name = work_name("0123456789abcdef", PurePosixPath(rel))
        assert not SMB_REFUSES & set(name)
        assert not name.endswith((".", " "))
        assert len(name) <= 255
        assert name.isascii()
        assert source_of(name) == PurePosixPath(rel)
    long = PurePosixPath("p/" + "x" * 300 + ".pdf")
    cut = work_name("0123456789abcdef", long)
    assert len(cut) <= 255
    assert source_of(cut) is None
    # Work files of the earlier scheme (claimed before an upgrade) are still traced.
    assert source_of("0123456789abcdef~leyrpat%2Ffile.pdf") == PurePosixPath("leyrpat/file.pdf")
    assert source_of("0123456789abcdef!leyrpat%2Ffi") is None


@pytest.mark.parametrize(
    "code", [*SHARE_ERRNOS, errno.EACCES, errno.EBUSY], ids=[*IDS, "EACCES", "EBUSY"]
)
def test_a_file_that_cannot_be_claimed_is_logged_once_and_stays(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf")
    monkeypatch.setattr(os, "rename", _failing(os.rename, claimer.inbox / "leyrpat", code))
    assert claimer.claim(ready) is None
    assert claimer.claim(ready) is None
    [line] = _events(caplog, "claim_failed")
    assert f"errno={errno.errorcode[code]}" in line
    assert "leyrpat" not in line
    assert (claimer.inbox / ready.rel).exists()
    assert claimer.journal.active() == []


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_a_share_error_while_claiming_pauses_the_folder(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    claimer = _claimer(tmp_path)
    told: list[PurePosixPath] = []
    claimer.on_unavailable = lambda rel, exc: told.append(rel)
    ready = _ready(claimer, "leyrpat/file.pdf")
    monkeypatch.setattr(os, "rename", _failing(os.rename, claimer.inbox / "leyrpat", code))
    assert claimer.claim(ready) is None
    assert told == [PurePosixPath("leyrpat")]
    assert not _events(caplog, "claim_failed")


def test_a_rename_that_lands_elsewhere_is_not_taken_for_another_instances_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """smbnetfs URL-decoded the old work name, so the rename went to a folder that does not
    exist (ENOENT) while the file stayed in the inbox: once read as "another instance took
    it", silently, forever."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf")
    real = os.rename

    def decoding_rename(src: Any, dest: Any) -> None:
        real(src, os.fsdecode(dest).replace("_2F", "/"))  # what a name-rewriting share does

    monkeypatch.setattr(os, "rename", decoding_rename)
    assert claimer.claim(ready) is None
    assert claimer.claim(ready) is None
    [line] = _events(caplog, "claim_failed")
    assert "level" not in line
    assert (claimer.inbox / ready.rel).exists()
    assert [r.levelno for r in caplog.records if "claim_failed" in r.getMessage()] == [
        logging.ERROR
    ]


def test_a_file_another_instance_holds_is_its_win_and_a_vanished_one_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    claimer = _claimer(tmp_path)
    other = claimer.inbox / WORK_DIR / "other"
    other.mkdir()
    ready = _ready(claimer, "leyrpat/file.pdf")
    os.rename(claimer.inbox / ready.rel, other / "0123456789abcdef-x")  # the other won
    assert claimer.claim(ready) is None
    assert not _events(caplog, "claim_failed")
    gone = _ready(claimer, "leyrpat/gone.pdf", b"%PDF-1.4 different size")
    (claimer.inbox / gone.rel).unlink()  # removed by a person between the look and the claim
    assert claimer.claim(gone) is None
    [line] = _events(caplog, "claim_failed")
    assert "disappeared" in line


# --- filing -------------------------------------------------------------------------------


def _filed_row(daemon: Daemon, tree: Tree, name: str) -> Row:
    tree.drop(f"p_1/{name}", pdf(name))
    path = tree.inbox / "p_1" / name
    row = daemon.claimer.claim(
        Ready(PurePosixPath(f"p_1/{name}"), time.time(), Snapshot.of(path.stat()))
    )
    assert row is not None
    error = {"kind": "rejected", "message": "test"}
    values = daemon.pipeline.filer.destination(row, "failed")
    return daemon.journal.change(row, state="rejected", error=error, **values)


def _failed_folder(tree: Tree) -> list[str]:
    return sorted(p.name for p in (tree.failed / "p_1").iterdir())


@pytest.mark.parametrize("no_hard_links", [False, True], ids=["link", "copy"])
@pytest.mark.parametrize("code", [*SHARE_ERRNOS, errno.EBUSY], ids=[*IDS, "EBUSY"])
def test_filing_that_fails_after_the_copy_is_retried_without_a_second_copy(
    daemon: Daemon,
    tree: Tree,
    code: int,
    no_hard_links: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The source's unlink fails (SMB refuses to delete an open file: EBUSY; a share that
    dies: ENOTCONN …): the retry recognises the copy it made instead of making `X (1).pdf`."""
    row = _filed_row(daemon, tree, "X.pdf")
    work = daemon.claimer.inbox / row.work
    monkeypatch.setattr(os, "unlink", _failing(os.unlink, work, code))
    if no_hard_links:
        monkeypatch.setattr(shares, "_renameat2", None)
        monkeypatch.setattr(os, "link", _failing(os.link, work, errno.EPERM))
    assert daemon.pipeline.finish(row).result == "deferred"
    assert len(_events(caplog, "filing_failed")) == 1
    monkeypatch.undo()
    assert daemon.pipeline.finish(daemon.journal.get(row.id) or row).result == "failed"
    assert _failed_folder(tree) == ["X.pdf", "X.pdf.receipt.json"]
    assert not work.exists()


def test_a_copy_cut_short_by_a_crash_is_made_again_not_filed_beside(
    daemon: Daemon, tree: Tree
) -> None:
    """A crash while copying onto a share without hard links leaves part of the file under
    its final name and no receipt; the next try recognises the prefix of its own file, makes
    the copy again and files it there: no `X (1).pdf`, no partial file left in failed/."""
    row = _filed_row(daemon, tree, "Cut.pdf")
    work = daemon.claimer.inbox / row.work
    assert row.dest is not None
    dest = tree.failed / row.dest
    dest.parent.mkdir(parents=True)
    dest.write_bytes(work.read_bytes()[:100])  # what the killed process had copied
    assert daemon.pipeline.finish(row).result == "failed"
    assert _failed_folder(tree) == ["Cut.pdf", "Cut.pdf.receipt.json"]
    assert dest.read_bytes() == pdf("Cut.pdf")
    assert not work.exists()


def test_a_shorter_file_that_is_not_ours_is_never_replaced(daemon: Daemon, tree: Tree) -> None:
    row = _filed_row(daemon, tree, "Other.pdf")
    assert row.dest is not None
    dest = tree.failed / row.dest
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"%PDF-1.4 put here by hand")
    assert daemon.pipeline.finish(row).result == "failed"
    assert _failed_folder(tree) == ["Other (1).pdf", "Other (1).pdf.receipt.json", "Other.pdf"]
    assert dest.read_bytes() == b"%PDF-1.4 put here by hand"


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_filing_into_a_folder_that_does_not_answer_waits_and_leaves_nothing_behind(
    daemon: Daemon,
    tree: Tree,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    row = _filed_row(daemon, tree, "Y.pdf")
    (tree.failed / "p_1").mkdir(parents=True)
    for call in ("link", "open", "mkdir"):
        monkeypatch.setattr(os, call, _failing(getattr(os, call), tree.failed / "p_1", code))
    assert daemon.pipeline.finish(row).result == "deferred"
    assert daemon.pipeline.finish(row).result == "deferred"
    assert len(_events(caplog, "filing_failed")) == 1
    monkeypatch.undo()
    assert (daemon.claimer.inbox / row.work).exists()  # still claimed: nothing lost
    assert daemon.pipeline.finish(daemon.journal.get(row.id) or row).result == "failed"
    assert _failed_folder(tree) == ["Y.pdf", "Y.pdf.receipt.json"]
    assert _events(caplog, "filing_recovered")


def test_no_hard_links_falls_back_to_a_rename_that_cannot_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shares, "_said", set())
    monkeypatch.setattr(os, "link", _failing(os.link, tmp_path, errno.EPERM))
    for n in range(2):
        (tmp_path / f"a{n}").write_bytes(b"a")
        place(tmp_path / f"a{n}", tmp_path / "done" / f"b{n}")
    (tmp_path / "c").write_bytes(b"c")
    with pytest.raises(FileExistsError):
        place(tmp_path / "c", tmp_path / "done" / "b0")
    assert (tmp_path / "done" / "b0").read_bytes() == b"a"
    assert (tmp_path / "c").exists()
    [line] = _events(caplog, "hard_links_unavailable")
    assert 'fallback="rename without overwrite"' in line
    assert sorted(os.listdir(tmp_path / "done")) == ["b0", "b1"]  # no hidden copies


def test_no_hard_links_and_no_renameat2_copies_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shares, "_said", set())
    monkeypatch.setattr(shares, "_renameat2", None)
    monkeypatch.setattr(os, "link", _failing(os.link, tmp_path, errno.EPERM))
    (tmp_path / "a").write_bytes(b"a" * 100_000)
    place(tmp_path / "a", tmp_path / "done" / "b")
    assert (tmp_path / "done" / "b").read_bytes() == b"a" * 100_000
    assert not (tmp_path / "a").exists()
    (tmp_path / "c").write_bytes(b"c")
    with pytest.raises(FileExistsError):
        place(tmp_path / "c", tmp_path / "done" / "b")
    write_receipt(tmp_path / "done" / "b.receipt.json", {"status": "done"})
    assert os.listdir(tmp_path / "done") == sorted(["b", "b.receipt.json"]) or sorted(
        os.listdir(tmp_path / "done")
    ) == ["b", "b.receipt.json"]
    [line] = _events(caplog, "hard_links_unavailable")
    assert 'fallback="exclusive copy"' in line


def test_a_copy_that_fails_half_way_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shares, "_renameat2", None)
    monkeypatch.setattr(os, "link", _failing(os.link, tmp_path, errno.EPERM))
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(OSError):  # noqa: PT011 - whatever fsync raised, passed on
        place(tmp_path / "a", tmp_path / "done" / "b")
    assert os.listdir(tmp_path / "done") == []
    assert (tmp_path / "a").exists()


def _no_links_no_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A share like smbnetfs: link() refused, no renameat2. Returns, for each copy made, whether
    the inbox name was free of any file while the bytes were being copied."""
    monkeypatch.setattr(shares, "_said", set())
    monkeypatch.setattr(shares, "_renameat2", None)
    monkeypatch.setattr(os, "link", _failing(os.link, tmp_path, errno.EPERM))
    seen: list[bool] = []
    real_copy = shares.shutil.copyfileobj

    def copy(reader: Any, writer: Any, length: int = 0) -> None:
        seen.append(not (tmp_path / "inbox" / "p" / "scan.pdf").exists())
        real_copy(reader, writer, length)

    monkeypatch.setattr(shares.shutil, "copyfileobj", copy)
    return seen


@pytest.mark.parametrize("rename_replaces", [True, False], ids=["rename-replaces", "sftp-rename"])
def test_a_copy_into_the_inbox_is_not_there_until_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rename_replaces: bool
) -> None:
    """`ingestd retry` or a released claim putting a file back into the inbox on a share
    without hard links: a copy made at the inbox name itself would, if the process were killed
    half-way, leave a truncated file that the daemon takes for a finished one and uploads."""
    seen = _no_links_no_renameat2(tmp_path, monkeypatch)
    if not rename_replaces:  # SFTP without posix-rename: a rename never replaces a file
        monkeypatch.setattr(os, "replace", _failing(os.replace, tmp_path, errno.EPERM))
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "scan.pdf").write_bytes(b"%PDF" * 50_000)
    dest = tmp_path / "inbox" / "p" / "scan.pdf"
    place(tmp_path / "failed" / "scan.pdf", dest, watched=True)
    assert seen == [True]  # nothing at the inbox name while the bytes were copied
    assert dest.read_bytes() == b"%PDF" * 50_000
    assert os.listdir(dest.parent) == ["scan.pdf"]  # no hidden copy left
    assert not (tmp_path / "failed" / "scan.pdf").exists()
    (tmp_path / "failed" / "other.pdf").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        place(tmp_path / "failed" / "other.pdf", dest, watched=True)
    assert dest.read_bytes() == b"%PDF" * 50_000  # never overwritten
    assert (tmp_path / "failed" / "other.pdf").read_bytes() == b"other"
    assert os.listdir(dest.parent) == ["scan.pdf"]


def test_a_copy_into_the_inbox_across_file_systems_is_not_there_until_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """failed/ on another file system than the inbox (EXDEV), and the inbox a share without
    hard links: the hidden copy is given the name, never copied again at the name itself."""
    seen = _no_links_no_renameat2(tmp_path, monkeypatch)
    real_link = os.link

    def link(src: Any, dest: Any, **kwargs: Any) -> None:
        if Path(os.fsdecode(src)).parent.name == "failed":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(src, dest, **kwargs)

    monkeypatch.setattr(os, "link", _failing(link, tmp_path / "inbox", errno.EPERM))
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "scan.pdf").write_bytes(b"x" * 10_000)
    dest = tmp_path / "inbox" / "p" / "scan.pdf"
    place(tmp_path / "failed" / "scan.pdf", dest, watched=True)
    assert seen == [True]
    assert dest.read_bytes() == b"x" * 10_000
    assert os.listdir(dest.parent) == ["scan.pdf"]
    assert not (tmp_path / "failed" / "scan.pdf").exists()


def test_two_copies_to_one_inbox_name_at_once_never_share_a_hidden_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two put-backs to one inbox name at the same moment (a claim given back while `ingestd
    retry` puts back a file of that name). With one hidden name for both, the second removed
    the first's copy and made its own under that name; the first, done copying, gave the
    second's half-made copy the inbox name and deleted its own source: its document gone, a
    truncated one in the inbox. Each copy now has a name of its own: one wins whole, the
    other keeps its source."""
    _no_links_no_renameat2(tmp_path, monkeypatch)
    real_copy = shares.shutil.copyfileobj
    (tmp_path / "failed").mkdir()
    first, second = tmp_path / "failed" / "first.pdf", tmp_path / "failed" / "second.pdf"
    first.write_bytes(b"1" * 100_000)
    second.write_bytes(b"2" * 100_000)
    dest = tmp_path / "inbox" / "p" / "scan.pdf"
    dest.parent.mkdir(parents=True)
    second_copying, first_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def copy(reader: Any, writer: Any, length: int = 0) -> None:
        if threading.current_thread() is not threading.main_thread():
            second_copying.set()  # the second is half-way: it goes on once the first is done
            assert first_done.wait(10)
            real_copy(reader, writer, length)
            return
        mover.start()
        assert second_copying.wait(10)
        real_copy(reader, writer, length)

    def put_back_second() -> None:
        try:
            place(second, dest, watched=True)
        except BaseException as exc:
            errors.append(exc)

    mover = threading.Thread(target=put_back_second)
    monkeypatch.setattr(shares.shutil, "copyfileobj", copy)
    try:
        place(first, dest, watched=True)
    finally:
        first_done.set()
        mover.join(10)
    assert dest.read_bytes() == b"1" * 100_000  # the first's, whole
    assert not first.exists()
    assert [type(e) for e in errors] == [FileExistsError]
    assert second.read_bytes() == b"2" * 100_000  # kept, to be put back under another name
    assert os.listdir(dest.parent) == ["scan.pdf"]  # no hidden copy left


def test_copies_left_by_crashes_are_swept_once_an_hour_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hidden copies a kill left (documents) do not lie about for good: the next copy into the
    folder sweeps those an hour old; a younger one may be another process's, being made."""
    _no_links_no_renameat2(tmp_path, monkeypatch)
    monkeypatch.setattr(shares, "_swept", {})
    folder = tmp_path / "inbox" / "p"
    folder.mkdir(parents=True)
    old = [".scan.pdf.ingestd-copy", ".scan.pdf.aaaa1111.ingestd-copy", ".x.pdf.0a.ingestd-copy"]
    kept = [".scan.pdf.bbbb2222.ingestd-copy", ".scan.pdf.part", "letter.pdf"]
    for name in old + kept:
        (folder / name).write_bytes(b"part")
    an_hour_ago = time.time() - shares.STALE_COPY_SECONDS - 60
    for name in [*old, ".scan.pdf.part", "letter.pdf"]:
        os.utime(folder / name, (an_hour_ago, an_hour_ago))
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "fax.pdf").write_bytes(b"fax")
    place(tmp_path / "failed" / "fax.pdf", folder / "fax.pdf", watched=True)
    assert sorted(os.listdir(folder)) == sorted([*kept, "fax.pdf"])


def test_a_copy_a_crash_left_for_the_same_move_is_replaced_when_it_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim given back (or a file filed) makes its hidden copy under a name of its own row:
    the copy a kill left is found by that name and replaced on the next try, however young."""
    _no_links_no_renameat2(tmp_path, monkeypatch)
    work = tmp_path / "inbox" / ".ingestd" / "work" / "i1" / "c1~p%2Ffax.pdf"
    work.parent.mkdir(parents=True)
    work.write_bytes(b"the whole fax")
    dest = tmp_path / "inbox" / "p" / "fax.pdf"
    dest.parent.mkdir()
    tag = shares.copy_tag("i1", work)
    assert tag != shares.copy_tag("survivor", work)  # a survivor's copies never share its names
    shares.hidden_copy_name(dest, tag).write_bytes(b"the wh")  # the kill, half-way
    shares.move_no_replace(work, dest, watched=True, tag=tag)
    assert dest.read_bytes() == b"the whole fax"
    assert os.listdir(dest.parent) == ["fax.pdf"]
    assert not work.exists()


def test_a_rename_done_but_answered_with_an_error_leaves_nothing_in_the_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The share renamed the copy into place and lost the answer (EIO): the give-back fails, so
    neither the copy nor the empty file may stay under the inbox name (the file is still
    claimed and goes on from its work folder)."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf", b"%PDF-1.4 " + b"x" * 5000)
    row = claimer.claim(ready)
    assert row is not None
    _no_links_no_renameat2(tmp_path, monkeypatch)
    real_replace = os.replace

    def replace_then_fail(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "replace", replace_then_fail)
    assert claimer.release(row) is False
    monkeypatch.undo()
    assert os.listdir(claimer.inbox / "leyrpat") == []
    assert (claimer.inbox / row.work).read_bytes() == b"%PDF-1.4 " + b"x" * 5000
    assert claimer.journal.get(row.id) is not None


def test_publishing_never_removes_a_file_that_replaced_the_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename over the empty placeholder fails, and meanwhile the name holds someone
    else's file: it is left alone, and the copy is not given the name."""
    hidden, dest = tmp_path / ".scan.pdf.x.ingestd-copy", tmp_path / "scan.pdf"
    hidden.write_bytes(b"ours")

    def replace(src: Any, dst: Any) -> None:
        os.unlink(dest)
        dest.write_bytes(b"theirs")  # a scanner wrote the name between two steps
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FileExistsError):
        shares.publish(hidden, dest)
    assert dest.read_bytes() == b"theirs"
    assert hidden.read_bytes() == b"ours"


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_give_back_that_fails_half_way_leaves_the_file_claimed_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """The share fails after the inbox name was made and before the work file was removed:
    the file stays claimed (its row goes on), and is not also in the inbox to be claimed and
    sent a second time."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf", b"%PDF-1.4 " + b"x" * 5000)
    row = claimer.claim(ready)
    assert row is not None
    if not links:
        monkeypatch.setattr(shares, "_renameat2", None)
        monkeypatch.setattr(os, "link", _failing(os.link, tmp_path, errno.EPERM))

    def still_written(path: Any, real_unlink: Any) -> None:
        with open(path, "ab") as writer:  # a writer still has it (SMB: unlink refused)
            writer.write(b" and a second page")
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    _on_unlink_of(monkeypatch, claimer.inbox / row.work, still_written)
    assert claimer.release(row) is False
    monkeypatch.undo()
    assert not (claimer.inbox / ready.rel).exists()
    assert (claimer.inbox / row.work).exists()
    assert claimer.journal.get(row.id) is not None


@pytest.mark.parametrize(
    ("links", "backup_link"),
    [(True, False), (False, False), (True, True)],
    ids=["hard-links", "no-hard-links", "a-backup-link"],
)
def test_a_give_back_whose_unlink_was_done_but_answered_with_an_error_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool, backup_link: bool
) -> None:
    """NFS or SMB retrying an unlink that was done answers ENOENT: the work file is gone, so
    the inbox file is the only one left and must stay (undoing the move would lose it) — also
    when the file has another name of its own (a hard-link backup of the inbox)."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf", b"%PDF-1.4 " + b"x" * 5000)
    if backup_link:
        os.link(claimer.inbox / ready.rel, tmp_path / "backup.pdf")
    row = claimer.claim(ready)
    assert row is not None
    if not links:
        _no_links_no_renameat2(tmp_path, monkeypatch)

    def done_but_answered_enoent(path: Any, real_unlink: Any) -> None:
        real_unlink(path)
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    _on_unlink_of(monkeypatch, claimer.inbox / row.work, done_but_answered_enoent)
    assert claimer.release(row) is True
    monkeypatch.undo()
    assert (claimer.inbox / ready.rel).read_bytes() == b"%PDF-1.4 " + b"x" * 5000
    assert not (claimer.inbox / row.work).exists()


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_give_back_racing_a_takeover_leaves_the_file_to_the_survivor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """While this instance (thought dead) gives a claim back, a survivor takes the work file
    over (a rename into its own work folder, keeping its name): the give-back's unlink finds
    nothing. The inbox file is the survivor's file under a second name (or a copy of it) and
    must go, or it would be claimed and sent again."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf", b"%PDF-1.4 " + b"x" * 5000)
    row = claimer.claim(ready)
    assert row is not None
    if not links:
        _no_links_no_renameat2(tmp_path, monkeypatch)
    survivor = claimer.inbox / ".ingestd" / "work" / "survivor" / row.work.name
    survivor.parent.mkdir(parents=True)

    def taken_just_before(path: Any, real_unlink: Any) -> None:
        os.rename(path, survivor)  # the survivor's take_over
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    _on_unlink_of(monkeypatch, claimer.inbox / row.work, taken_just_before)
    assert claimer.release(row) is False
    monkeypatch.undo()
    assert not (claimer.inbox / ready.rel).exists()
    assert survivor.read_bytes() == b"%PDF-1.4 " + b"x" * 5000


def _on_unlink_of(
    monkeypatch: pytest.MonkeyPatch, target: Path, act: Callable[[Any, Any], None]
) -> None:
    """os.unlink of `target` calls `act(path, real_unlink)` instead (which may unlink, then
    raise what a share would answer); every other path is unlinked as usual."""
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(os.fsdecode(path)) == target:
            act(path, real_unlink)
            return
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def _failing_fsync(fd: int) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("code", SHARE_ERRNOS, ids=IDS)
def test_a_claimed_file_on_a_share_that_does_not_answer_waits(
    daemon: Daemon,
    tree: Tree,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Never a rejection ("unreadable") for what is the share's trouble, not the file's."""
    tree.drop("p_1/Z.pdf", pdf("Z"))
    path = tree.inbox / "p_1" / "Z.pdf"
    row = daemon.claimer.claim(
        Ready(PurePosixPath("p_1/Z.pdf"), time.time(), Snapshot.of(path.stat()))
    )
    assert row is not None
    work = daemon.claimer.inbox / row.work
    monkeypatch.setattr(os, "open", _failing(os.open, work, code))
    assert daemon.pipeline.process(row).result == "deferred"
    assert daemon.pipeline.process(row).result == "deferred"
    monkeypatch.undo()
    said = [r for r in caplog.records if "event=claimed_file_unreadable" in r.getMessage()]
    assert len(said) == 1  # said once, not at every try
    assert "Z.pdf" not in said[0].getMessage()
    assert (work.exists() and not tree.failed.exists()) or not list(tree.failed.rglob("*.pdf"))


@pytest.mark.parametrize("dest_links", [True, False], ids=["dest-links", "dest-no-links"])
def test_a_move_across_file_systems_leaves_no_hidden_copy(
    tmp_path: Path, dest_links: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's `.X.pdf.ingestd-copy`: a cross-device copy whose final link was refused."""
    real_link = os.link
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "X.pdf").write_bytes(b"x" * 5000)

    def link(src: Any, dest: Any, **kwargs: Any) -> None:
        if Path(src).parent.name == "work":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        if not dest_links:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        real_link(src, dest, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(shares, "_renameat2", None)
    place(tmp_path / "work" / "X.pdf", tmp_path / "done" / "X.pdf")
    assert os.listdir(tmp_path / "done") == ["X.pdf"]
    assert (tmp_path / "done" / "X.pdf").read_bytes() == b"x" * 5000
    assert os.listdir(tmp_path / "work") == []


def test_a_give_back_whose_source_cannot_be_looked_at_keeps_the_inbox_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unlink of the work file answers EIO and so does a look at it: it may be gone. The
    inbox copy stays — at worst the file is sent twice; removing it could lose the only copy."""
    claimer = _claimer(tmp_path)
    ready = _ready(claimer, "leyrpat/file.pdf", b"%PDF-1.4 " + b"x" * 5000)
    row = claimer.claim(ready)
    assert row is not None
    _no_links_no_renameat2(tmp_path, monkeypatch)
    work = claimer.inbox / row.work
    real_lstat = os.lstat
    unlinked: list[bool] = []

    def done_but_answered_eio(path: Any, real_unlink: Any) -> None:
        real_unlink(path)
        unlinked.append(True)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if unlinked and Path(os.fsdecode(path)) == work:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # the share still in trouble
        return real_lstat(path, *args, **kwargs)

    _on_unlink_of(monkeypatch, work, done_but_answered_eio)
    monkeypatch.setattr(os, "lstat", lstat)
    assert claimer.release(row) is False
    monkeypatch.undo()
    assert (claimer.inbox / ready.rel).read_bytes() == b"%PDF-1.4 " + b"x" * 5000


def test_a_takeover_is_found_under_an_older_work_name_too(tmp_path: Path) -> None:
    """A claim made before the naming changed (`<claim>~<encoded>`) keeps its claim but not its
    name when a survivor takes it over: it is still found, by the claim."""
    claimer = _claimer(tmp_path)
    claim = "0123456789abcdef0123456789abcdef"
    survivor = claimer.inbox / WORK_DIR / "survivor"
    survivor.mkdir(parents=True)
    taken = survivor / work_name(claim, PurePosixPath("leyrpat/file.pdf"))
    taken.write_bytes(b"x")
    assert claimer._taken_over(f"{claim}~leyrpat%2Ffile.pdf") == taken
    assert claimer._taken_over("fedcba9876543210fedcba9876543210~leyrpat%2Ffile.pdf") is None
