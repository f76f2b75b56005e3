"""The running daemon's status file (`status.json` in the state folder): the one owner of its
name, its writing and its reading. The daemon publishes it at every watchdog tick; `ingestd
status` (another process) reads it while it is fresh and its writer is alive."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STALE_SECONDS = 30.0  # the daemon rewrites it at every watchdog tick (≤ 5 s)


def publish(state_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file atomically (it is ours alone, so replacing is right here)."""
    path = state_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(status, sort_keys=True))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        pass  # status is a convenience; never stop the daemon over it


def read_running(state_dir: Path) -> dict[str, Any] | None:
    """The status a live daemon published recently, else None."""
    try:
        status = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or time.time() - status.get("updated_at", 0) > STALE_SECONDS:
        return None
    try:
        os.kill(int(status["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    return status
