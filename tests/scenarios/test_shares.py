"""An inbox, done/ and failed/ on a real network file system: sshfs (FUSE) against an OpenSSH
server on 127.0.0.1, both started here in a temporary folder with throwaway keys.

The SFTP server refuses hard links and POSIX renames (`sftp-server -P hardlink,posix-rename`),
as smbnetfs does: link() gives EPERM, renameat2(RENAME_NOREPLACE) EINVAL, and a plain rename
never overwrites. Files are written on the server side (as a scanner writing to the share does)
and the daemon sees them by polling its mount. Killing the sshfs process is a share that dies
(ENOTCONN); mounting again is the share coming back.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd.content import Snapshot
from ingestd.filing.places import place
from ingestd.inbox.claims import Claimer
from ingestd.inbox.settle import Ready
from ingestd.journal import Journal
from ingestd.observe.logs import Masker
from ingestd.sandbox import Sandbox
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
SSHD = Path("/usr/sbin/sshd")


def _unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root (sshd and a FUSE mount)"
    if not Path("/dev/fuse").exists():
        return "FUSE is unavailable (/dev/fuse missing)"
    for tool in ("sshfs", "ssh-keygen", "fusermount3"):
        if shutil.which(tool) is None and not (
            tool == "fusermount3" and shutil.which("fusermount")
        ):
            return f"{tool} is not installed (tests/tools.sh installs it as root)"
    if not SSHD.exists() or not SFTP_SERVER.exists():
        return "openssh-server is not installed (tests/tools.sh installs it as root)"
    return ""


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_unavailable()), reason=_unavailable() or "-"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Share:
    server: Path  # the share's files as the server has them (a scanner writes here)
    mount: Path  # the same files through sshfs (ingestd works here)
    port: int
    key: Path
    sshfs: subprocess.Popen[bytes] | None = None

    def mount_it(self) -> None:
        self.sshfs = subprocess.Popen(
            [
                "sshfs", "-f", "-p", str(self.port),
                "-o", f"IdentityFile={self.key},BatchMode=yes,StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null,LogLevel=ERROR",
                # What the README asks of a share: no directory cache, so polls see new files.
                "-o", "dir_cache=no,cache_timeout=0,attr_timeout=0",
                f"root@127.0.0.1:{self.server}", str(self.mount),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: os.path.ismount(self.mount), timeout=20)

    def kill(self) -> None:
        """The share dies: its FUSE process is gone, the mount answers ENOTCONN."""
        assert self.sshfs is not None
        self.sshfs.kill()
        self.sshfs.wait(10)
        self.sshfs = None

    def restore(self) -> None:
        subprocess.run(["fusermount", "-uz", str(self.mount)], check=False, capture_output=True)
        self.mount_it()


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Share]:
    base = tmp_path / "share"
    (base / "srv").mkdir(parents=True)
    (base / "mnt").mkdir()
    host_key, user_key = base / "host_key", base / "user_key"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (base / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    (base / "authorized_keys").chmod(0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    for _ in range(5):
        port = _free_port()
        config = base / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile {base / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\n"
            f"Subsystem sftp {SFTP_SERVER} -P hardlink,posix-rename\n"
        )
        sshd = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(base / "sshd.log").open("ab"),
        )
        if _listening(port, sshd):
            break
        sshd.kill()
        sshd.wait(10)
    else:
        pytest.fail("sshd did not start on 127.0.0.1: see " + str(base / "sshd.log"))
    share = Share(base / "srv", base / "mnt", port, user_key)
    try:
        share.mount_it()
        yield share
    finally:
        if share.sshfs is not None:
            share.sshfs.kill()
            share.sshfs.wait(10)
        subprocess.run(["fusermount", "-uz", str(share.mount)], check=False, capture_output=True)
        sshd.terminate()
        sshd.wait(10)


def _listening(port: int, sshd: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sshd.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)  # poll interval, bounded by the deadline
            continue
        return True
    return False


def _shared_tree(share: Share, tmp_path: Path) -> Tree:
    for folder in ("inbox", "done", "failed"):
        (share.server / folder).mkdir()
    root = tmp_path / "clinic"
    root.mkdir()
    return Tree(
        root, share.mount / "inbox", share.mount / "done", share.mount / "failed",
        root / "state" / "journal.sqlite",
    )  # fmt: skip


def _write_on_server(share: Share, rel: str, data: bytes) -> None:
    """As a scanner writing to the share: a temporary name, then a rename."""
    path = share.server / "inbox" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def _stray(share: Share) -> list[str]:
    """Hidden copies or leftovers anywhere on the share (ingestd's own .ingestd excepted)."""
    return sorted(
        str(p.relative_to(share.server))
        for p in share.server.rglob("*")
        if p.name.startswith(".") and ".ingestd" not in p.relative_to(share.server).parts
        if ".ingestd" not in p.relative_to(share.server).parts
    )


def _daemon(tree: Tree, sandbox: Sandbox) -> DaemonProcess:
    watch = {"poll": True, "settle_seconds": 0.3, "scan_interval_seconds": 5}
    config = make_config(tree, sandbox, watch=watch)
    return DaemonProcess(config, tree.root / "daemon.log")


def test_files_on_a_share_without_hard_links_are_uploaded_once_and_filed(
    share: Share, tmp_path: Path, sandbox: Sandbox
) -> None:
    tree = _shared_tree(share, tmp_path)
    proc = _daemon(tree, sandbox)
    try:
        proc.wait_started()
        files = {f"p_{n}/scan {n}%2F.pdf": pdf(f"share {n}", 20_000 + n) for n in range(4)}
        for rel, data in files.items():
            _write_on_server(share, rel, data)
        wait_for(lambda: len(list((share.server / "done").rglob("*.receipt.json"))) == 4, 60)
        assert proc.proc.poll() is None, proc.output()
        done = {
            str(p.relative_to(share.server / "done")): p.read_bytes()
            for p in (share.server / "done").rglob("*.pdf")
        }
        assert done == files  # each under its own name: no "(1)" copies
        assert len(sandbox.documents()) == 4  # each uploaded once
        assert _stray(share) == [], proc.output()
        work = share.server / "inbox" / ".ingestd" / "work"
        assert [p for p in work.rglob("*") if p.is_file() and p.name != ".lease"] == []
        assert proc.stop() == 0
        log = proc.output()
        assert log.count("event=hard_links_unavailable") == 1
        assert "claim_failed" not in log
        assert "filing_failed" not in log
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_a_share_that_dies_pauses_the_inbox_and_what_came_meanwhile_is_uploaded(
    share: Share, tmp_path: Path, sandbox: Sandbox
) -> None:
    tree = _shared_tree(share, tmp_path)
    proc = _daemon(tree, sandbox)
    try:
        proc.wait_started()
        _write_on_server(share, "p_1/before.pdf", pdf("before"))
        wait_for(lambda: len(sandbox.documents()) == 1, 30)
        share.kill()
        wait_for(lambda: "event=folder_unavailable" in proc.output(), 20)
        for n in range(3):
            _write_on_server(share, f"p_{n}/meanwhile.pdf", pdf(f"meanwhile {n}"))
        share.restore()
        wait_for(lambda: len(sandbox.documents()) == 4, 60)
        wait_for(lambda: len(list((share.server / "done").rglob("*.receipt.json"))) == 4, 30)
        assert proc.proc.poll() is None  # it stayed up
        log = proc.output()
        assert log.count("event=folder_unavailable") == 1
        assert "errno=ENOTCONN" in log or "the inbox folder is missing" in log
        assert "event=folder_available" in log
        assert sorted(d.sha256 for d in sandbox.documents()) == sorted(
            {d.sha256 for d in sandbox.documents()}
        )  # nothing twice
        assert _stray(share) == []
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_a_daemon_started_while_the_share_is_down_waits_for_it(
    share: Share, tmp_path: Path, sandbox: Sandbox
) -> None:
    tree = _shared_tree(share, tmp_path)
    _write_on_server(share, "p_1/early.pdf", pdf("early"))
    share.kill()
    proc = _daemon(tree, sandbox)
    try:
        proc.wait_started()
        wait_for(lambda: "event=folder_unavailable" in proc.output(), 20)
        share.restore()
        wait_for(lambda: len(list((share.server / "done").rglob("*.receipt.json"))) == 1, 60)
        assert len(sandbox.documents()) == 1
        assert proc.proc.poll() is None
        assert proc.output().count("event=folder_unavailable") == 1
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_a_file_put_back_into_the_inbox_on_the_share_arrives_whole_and_never_over_another(
    share: Share,
) -> None:
    """What `ingestd retry` and a released claim do, on this real share without hard links
    or renameat2, where a rename never replaces a file: the copy is made under a hidden name and
    only then given the inbox name (a kill half-way leaves no truncated file to upload), and a
    name that is taken is never overwritten."""
    for folder in ("inbox/p", "failed/p"):
        (share.server / folder).mkdir(parents=True)
    data = pdf("put back", 300_000)
    (share.server / "failed" / "p" / "scan.pdf").write_bytes(data)
    dest = share.mount / "inbox" / "p" / "scan.pdf"
    place(share.mount / "failed" / "p" / "scan.pdf", dest, watched=True)
    assert (share.server / "inbox" / "p" / "scan.pdf").read_bytes() == data
    assert not (share.server / "failed" / "p" / "scan.pdf").exists()
    (share.server / "failed" / "p" / "other.pdf").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        place(share.mount / "failed" / "p" / "other.pdf", dest, watched=True)
    assert (share.server / "inbox" / "p" / "scan.pdf").read_bytes() == data
    assert (share.server / "failed" / "p" / "other.pdf").read_bytes() == b"other"
    assert _stray(share) == []


def test_a_claim_given_back_on_the_share_whose_work_file_stays_is_not_also_in_the_inbox(
    share: Share, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On this real share (no hard links, no renameat2, FUSE inode numbers, 1 s mtimes): a
    claim given back whose work file cannot be removed (SMB refuses while a writer holds it)
    is undone — the copy made at the inbox name is removed by its identity, the file stays
    claimed, and nothing is left at the inbox name to be claimed and sent a second time."""
    (share.server / "inbox" / "p").mkdir(parents=True)
    data = pdf("given back", 50_000)
    (share.server / "inbox" / "p" / "scan.pdf").write_bytes(data)
    inbox = share.mount / "inbox"
    claimer = Claimer(inbox, Journal(tmp_path / "j.sqlite"), "i1", Masker(b"k" * 32))
    claimer.prepare()
    path = inbox / "p" / "scan.pdf"
    row = claimer.claim(Ready(PurePosixPath("p/scan.pdf"), time.time(), Snapshot.of(path.stat())))
    assert row is not None
    real_unlink = os.unlink

    def unlink(target: Any, *args: Any, **kwargs: Any) -> None:
        if Path(os.fsdecode(target)) == inbox / row.work:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_unlink(target, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert claimer.release(row) is False
    monkeypatch.undo()
    assert not (share.server / "inbox" / "p" / "scan.pdf").exists()
    assert (inbox / row.work).read_bytes() == data
    assert _stray(share) == []
