"""`ingestd status`: counts by state, the oldest waiting file, each target's health and recent
failures — read from the journal, the inbox and the running daemon's status file.

Nothing here prints a patient id, a file name or a document id: files appear as the same
keyed hashes the log uses.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from ingestd.commands.common import EXIT_OK, as_state_owner, load
from ingestd.config.model import Config
from ingestd.inbox.scan import scan
from ingestd.journal import ACTIVE_STATES, FINAL_STATES, open_journal
from ingestd.journal.postgres import PostgresJournal
from ingestd.observe.logs import load_masker
from ingestd.observe.statusfile import read_running
from ingestd.web.pages import age


def report(config: Config) -> dict[str, Any]:
    state_dir = config.paths.state.parent
    journal = open_journal(config.paths.state, config.journal)
    masker = load_masker(state_dir)
    try:
        counts = dict.fromkeys((*ACTIVE_STATES, *FINAL_STATES), 0)
        counts.update(journal.counts())
        failures = [
            {
                "file": masker.path(row.source),
                "kind": (row.error or {}).get("kind"),
                "http_status": (row.error or {}).get("http_status"),
                "finished_at": row.finished_at,
                **({"instance": row.holder} if row.holder else {}),
            }
            for row in journal.recent("failed", 10)
        ]
        oldest_claimed = journal.oldest_active()
        # A shared journal: every instance of the fleet and when the database last heard of it.
        fleet = journal.members() if isinstance(journal, PostgresJournal) else None
    finally:
        journal.close()
    waiting, oldest_inbox = _inbox(config.paths.inbox)
    now = time.time()
    oldest = min((t for t in (oldest_claimed, oldest_inbox) if t), default=None)
    daemon = read_running(state_dir)
    return {
        "daemon": "running" if daemon else "not running",
        "healthy": daemon.get("healthy") if daemon else None,
        "problem": daemon.get("problem") if daemon else None,
        "files": {"in_inbox": waiting, **counts},
        "oldest_waiting_seconds": round(now - oldest, 1) if oldest else None,
        "targets": daemon.get("targets", {}) if daemon else {},
        "recent_failures": failures,
        **({"fleet": fleet} if fleet is not None else {}),
    }


def _inbox(inbox: Path) -> tuple[int, float | None]:
    """Files waiting in the inbox, and the oldest one's modification time."""
    count, oldest = 0, None
    for rel in scan(inbox):
        try:
            mtime = os.lstat(inbox / rel).st_mtime
        except OSError:
            continue
        count += 1
        oldest = mtime if oldest is None else min(oldest, mtime)
    return count, oldest


def render(status: dict[str, Any]) -> str:
    files = status["files"]
    in_progress = sum(files.get(state, 0) for state in ACTIVE_STATES)
    lines = [
        f"daemon:      {status['daemon']}"
        + (f" ({'healthy' if status['healthy'] else 'UNHEALTHY: ' + str(status['problem'])})"
           if status["daemon"] == "running" else ""),
        f"files:       {files['in_inbox']} in the inbox, {in_progress} in progress, "
        f"{files.get('done', 0)} done, {files.get('failed', 0)} failed",
    ]  # fmt: skip
    oldest = status["oldest_waiting_seconds"]
    lines.append(
        f"oldest:      {age(oldest)} waiting" if oldest else "oldest:      nothing waiting"
    )
    for name, health in sorted(status["targets"].items()):
        if health["up"]:
            state = "up"
        elif health["misconfigured"]:
            state = f"PAUSED, credentials refused: {health.get('reason')}"
        else:
            state = f"PAUSED, not answering: {health.get('reason')}"
        lines.append(f"target {name}: {state}")
    lines.extend(
        f"instance {member['instance']}: {member['host']} pid {member['pid']}, "
        f"heard from {member['seen_seconds_ago']:g} s ago"
        for member in status.get("fleet", [])
    )
    if status["recent_failures"]:
        lines.append("recent failures:")
        for failure in status["recent_failures"]:
            http = f" (HTTP {failure['http_status']})" if failure.get("http_status") else ""
            lines.append(f"  {failure['finished_at']}  {failure['file']}  {failure['kind']}{http}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    config = load(args, in_service=False)
    as_state_owner(config)
    status = report(config)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return EXIT_OK
