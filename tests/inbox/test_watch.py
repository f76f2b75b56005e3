"""Watcher pieces that need no daemon: the mount table, scans, and the settle tracker."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ingestd.inbox.scan import scan
from ingestd.inbox.settle import Settler
from ingestd.inbox.watch import filesystem_type, needs_polling
from tests.samples import pdf

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv/clinic rw,relatime shared:20 - nfs4 fileserver:/export rw,vers=4.2
41 40 0:36 / /srv/clinic/local\\040disk rw - ext4 /dev/sdb1 rw
42 22 0:37 / /mnt/scans rw - fuse.sshfs scanner:/out rw
43 22 0:38 / /mnt/fax rw - cifs //fax/share rw
"""


def test_filesystem_type_uses_the_longest_mount_point() -> None:
    assert filesystem_type(Path("/srv/clinic/inbox"), MOUNTINFO) == "nfs4"
    assert filesystem_type(Path("/srv/clinic/local disk/inbox"), MOUNTINFO) == "ext4"
    assert filesystem_type(Path("/srv/clinical"), MOUNTINFO) == "ext4"
    assert filesystem_type(Path("/mnt/scans/x"), MOUNTINFO) == "fuse.sshfs"


def test_network_and_fuse_file_systems_are_polled() -> None:
    assert needs_polling("nfs4")
    assert needs_polling("cifs")
    assert needs_polling("fuse.sshfs")
    assert not needs_polling("ext4")
    assert not needs_polling("xfs")
    assert not needs_polling("")


def test_scan_skips_hidden_and_temporary_names_and_never_follows_links(tmp_path: Path) -> None:
    for rel in ("p1/a.pdf", "p1/.hidden/b.pdf", "p1/c.tmp", "p2/sub/d.pdf", ".ingestd/work/x"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "p3").symlink_to(tmp_path / "p2")  # a link to a folder is a path, not a tree
    found = sorted(str(p) for p in scan(tmp_path))
    assert found == ["p1/a.pdf", "p2/sub/d.pdf", "p3"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_file_is_ready_after_two_equal_looks_a_settle_time_apart(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(tmp_path, settle_for=lambda rel: 1.0, clock=clock)
    path = tmp_path / "p1" / "a.pdf"
    path.parent.mkdir()
    path.write_bytes(pdf("a"))
    rel = PurePosixPath("p1/a.pdf")
    settler.notice(rel)
    assert settler.look(rel) is None  # first look: only remembered
    clock.now += 0.5
    assert settler.look(rel) is None  # too soon
    with path.open("ab") as handle:  # grows: the settle time starts again
        handle.write(b"more")
    clock.now += 0.9
    assert settler.look(rel) is None
    clock.now += 1.0
    ready = settler.look(rel)
    assert ready is not None
    assert ready.rel == rel
    assert ready.snapshot is not None
    assert ready.format == "application/pdf"  # detected once, carried with the claim
    assert len(settler) == 0


def test_empty_files_wait_and_expire(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(tmp_path, settle_for=lambda rel: 0.0, empty_fail_seconds=0.0, clock=clock)
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "e.pdf").write_bytes(b"")
    rel = PurePosixPath("p1/e.pdf")
    settler.notice(rel)
    assert settler.look(rel) is None
    ready = settler.look(rel)
    assert ready is not None
    assert ready.empty_expired


def test_a_held_path_is_looked_at_again_only_when_it_changes(tmp_path: Path) -> None:
    settler = Settler(tmp_path, settle_for=lambda rel: 0.0)
    (tmp_path / "p1").mkdir()
    path = tmp_path / "p1" / "scanner.log"
    path.write_bytes(b"x")
    rel = PurePosixPath("p1/scanner.log")
    settler.hold(rel)
    settler.notice(rel)
    assert len(settler) == 0
    os.utime(path, ns=(1, 1))
    settler.notice(rel)
    assert len(settler) == 1
