"""What the running daemon reports about itself: the snapshot behind /metrics, /healthz and
`ingestd status`, the status.json it publishes, and the systemd STATUS= line."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ingestd.journal import ACTIVE_STATES, FINAL_STATES
from ingestd.observe.metrics import DaemonState
from ingestd.observe.statusfile import publish

if TYPE_CHECKING:
    from ingestd.daemon.loop import Daemon


def snapshot(daemon: Daemon) -> DaemonState:
    """The daemon's state (any thread)."""
    now = time.time()
    intake, config = daemon.intake, daemon.config
    files: dict[str, int] = dict.fromkeys(("waiting", *ACTIVE_STATES, *FINAL_STATES), 0)
    files.update(daemon.journal.counts())
    files["waiting"] = intake.waiting()
    oldest = [t for t in (intake.settler.oldest_wall(), daemon.journal.oldest_active()) if t]
    last_scan = intake.last_full_scan
    scan_age = None if last_scan is None else now - last_scan
    limit = 2 * config.watch.scan_interval_seconds + 30
    problem = ""
    down = intake.folders.down()
    if intake.folders.inbox_down():
        problem = "the inbox is not answering (a share that is down or not mounted?)"
    elif down:
        problem = f"{down} inbox folder(s) not answering"
    elif not daemon.once and not intake.folders.observation.alive():
        problem = "the inbox observer is not running"
    elif (scan_age if scan_age is not None else now - daemon.started) > limit:
        problem = "no full inbox scan finished recently"
    return DaemonState(
        files=files,
        oldest_waiting_seconds=now - min(oldest) if oldest else 0.0,
        last_scan_age_seconds=scan_age,
        targets=daemon.fleet.states(),
        healthy=not problem,
        problem=problem,
        inbox_up=not intake.folders.inbox_down(),
        folders_down=down,
    )


def publish_status(daemon: Daemon) -> None:
    """status.json in the state folder, for `ingestd status` (another process)."""
    snap = snapshot(daemon)
    publish(
        daemon.config.paths.state.parent,
        {
            "pid": os.getpid(),
            "instance": daemon.claimer.instance,
            "started_at": daemon.started,
            "updated_at": time.time(),
            "healthy": snap.healthy,
            "problem": snap.problem or None,
            "waiting": snap.files["waiting"],
            "in_progress": len(daemon.workers),
            "last_scan_age_seconds": snap.last_scan_age_seconds,
            "targets": snap.targets,
        },
    )


def status_line(daemon: Daemon) -> str:
    counts = daemon.journal.counts()
    return (
        f"STATUS=waiting {daemon.intake.waiting()}, in progress {len(daemon.workers)}, "
        f"done {counts.get('done', 0)}, failed {counts.get('failed', 0)}"
    )
