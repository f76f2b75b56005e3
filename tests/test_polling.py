"""Folders on network shares (`watch.sources[].poll`) are listed on a short cycle, because
inotify never sees what other clients of an NFS/SMB mount write."""

from __future__ import annotations

from pathlib import PurePosixPath

from ingestd.config.load import load_config
from ingestd.daemon.loop import Daemon
from ingestd.sandbox import Sandbox
from tests.conftest import Tree, make_config
from tests.samples import pdf


def test_polled_folders_are_found_by_scans_and_listed_each_cycle(
    tree: Tree, sandbox: Sandbox
) -> None:
    watch = {
        "sources": [{"folder": "*/fax", "poll": True}, {"folder": "*/lab", "settle_seconds": 9}]
    }
    config = load_config(str(make_config(tree, sandbox, watch=watch)))
    for folder in ("p_1/fax", "p_1/fax/old", "p_2/fax", "p_1/lab"):
        (tree.inbox / folder).mkdir(parents=True)
    daemon = Daemon(config)
    try:
        list(daemon.intake._scan())
        # A subfolder of a polled folder is listed with it, not on its own.
        assert daemon.intake.folders._polled == {PurePosixPath("p_1/fax"), PurePosixPath("p_2/fax")}
        assert config.watch.settle_for(PurePosixPath("p_1/lab/x.pdf")) == 9
        (tree.inbox / "p_1/fax/old/from-smb.pdf").write_bytes(pdf("smb"))
        (tree.inbox / "p_1/lab/not-polled.pdf").write_bytes(pdf("lab"))
        daemon.intake.folders.poll()
        assert len(daemon.intake.settler) == 1
        (tree.inbox / "p_2/fax").rmdir()
        daemon.intake.folders.poll()
        assert daemon.intake.folders._polled == {PurePosixPath("p_1/fax")}
    finally:
        daemon.journal.close()
