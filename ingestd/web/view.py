"""What the status page shows, gathered: per patient folder, the files waiting in the inbox, in
progress (journal rows not finished), done today and failed (their receipts in failed/, with
each failure's reason and what to do), the oldest waiting file, and each target's state.

Sources are the ones `ingestd status` reads: the inbox (a lazy scan), the journal (through a
read-only connection of the page's own) and the daemon's own snapshot of its targets; failures
come from the receipts in failed/, the files `ingestd retry` puts back. A gathered view is kept
for a couple of seconds (`ViewCache`), so many open pages cost one look at the journal.

Failed files carry an opaque key (a keyed hash of their place in failed/, under a key that
lives as long as the process): forms name a file by it, never by its name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.clock import utc_iso
from ingestd.config.model import Config
from ingestd.filing.receipts import SUFFIX, Receipt
from ingestd.inbox.scan import scan
from ingestd.journal.interface import JournalUnavailable
from ingestd.journal.reader import JournalView
from ingestd.names import patient_folder

CACHE_SECONDS = 2.0
MAX_FAILED = 2000  # receipts read from failed/ per look; more are counted, not listed
MAX_DONE_TODAY = 5000
MAX_RECEIPT_BYTES = 4 * 1024 * 1024  # a receipt larger than this is not read whole
NO_FOLDER = ""  # files straight in the inbox root (they fail as no_patient_folder)
STATES = ("waiting", "in_progress", "done_today", "failed")


@dataclass(frozen=True)
class Item:
    """One file as the page lists it."""

    folder: str
    name: str  # the path inside the patient folder
    state: str  # one of STATES
    when: float | None = None  # waiting: modified; in progress: received; else finished
    reason: str | None = None  # failed: the receipt's message (it says what to do)
    kind: str | None = None
    http_status: int | None = None
    key: str = ""  # failed: the opaque key its Retry form carries
    receipt: Path | None = field(default=None, repr=False)


@dataclass
class Folder:
    name: str
    items: dict[str, list[Item]] = field(default_factory=lambda: {s: [] for s in STATES})

    def count(self, state: str) -> int:
        return len(self.items[state])

    @property
    def oldest_waiting(self) -> float | None:
        times = [i.when for s in ("waiting", "in_progress") for i in self.items[s] if i.when]
        return min(times, default=None)


@dataclass(frozen=True)
class TargetState:
    name: str
    state: str  # up | paused | misconfigured
    why: str


@dataclass
class View:
    at: float
    folders: list[Folder]
    targets: list[TargetState]
    healthy: bool = True
    problem: str = ""
    failed_not_listed: int = 0

    @property
    def oldest_waiting(self) -> float | None:
        return min((t for f in self.folders if (t := f.oldest_waiting)), default=None)

    def total(self, state: str) -> int:
        return sum(folder.count(state) for folder in self.folders)

    def failed_item(self, key: str) -> Item | None:
        for folder in self.folders:
            for item in folder.items["failed"]:
                if hmac.compare_digest(item.key, key):
                    return item
        return None

    def search(self, text: str) -> list[Item]:
        """Files whose name (within the patient folder) holds `text`, case-insensitively."""
        wanted = text.strip().casefold()
        return [
            item
            for folder in self.folders
            for state in STATES
            for item in folder.items[state]
            if wanted and wanted in item.name.casefold()
        ]


def target_state(name: str, health: Mapping[str, Any]) -> TargetState:
    """A target's state in the front desk's words (the daemon's snapshot of one target)."""
    reason = health.get("reason") or "no reason given"
    if health.get("up"):
        return TargetState(name, "up", "taking uploads")
    if health.get("misconfigured"):
        why = f"credentials refused: {reason}; ask IT to fix the config"
        return TargetState(name, "misconfigured", why)
    why = f"not answering: {reason}; its files wait and are sent when it answers again"
    return TargetState(name, "paused", why)


@dataclass
class Gatherer:
    """Gathers a `View`; `key` makes the failed files' opaque keys."""

    config: Callable[[], Config]
    reader: JournalView
    daemon: Callable[[], Any]  # the daemon's DaemonState (targets, healthy, problem)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __call__(self) -> View:
        config = self.config()
        folders: dict[str, Folder] = {}

        def add(items: Iterable[Item]) -> None:
            for item in items:
                folders.setdefault(item.folder, Folder(item.folder)).items[item.state].append(item)

        problems: list[str] = []
        add(_waiting(config.paths.inbox, problems))
        try:
            add(list(_journal(self.reader, _local_midnight())))
        except JournalUnavailable:
            problems.append("the shared journal is not answering: files in progress are not shown")
        failed, not_listed = self._failed(config.paths.failed, problems)
        add(failed)
        state = self.daemon()
        targets = [target_state(name, health) for name, health in sorted(state.targets.items())]
        problem = state.problem or ("; ".join(problems) if problems else "")
        return View(
            at=time.time(),
            folders=sorted(folders.values(), key=lambda f: f.name.casefold()),
            targets=targets,
            healthy=state.healthy and not problems,
            problem=problem,
            failed_not_listed=not_listed,
        )

    def _failed(self, root: Path, problems: list[str]) -> tuple[list[Item], int]:
        receipts = sorted(_receipts(root, problems), reverse=True)
        items = []
        for modified, path in receipts[:MAX_FAILED]:
            try:
                receipt = _read_receipt(path)
            except (OSError, ValueError, content.UnsafeFile):
                continue  # being moved by a retry right now, or not a receipt
            where = PurePosixPath(path.relative_to(root).as_posix())
            folder = patient_folder(where) or NO_FOLDER
            inside = where.relative_to(folder) if folder else where
            error = receipt.error or {}
            items.append(
                Item(
                    folder=folder,
                    name=str(inside)[: -len(SUFFIX)],
                    state="failed",
                    when=_epoch(receipt.finished_at) or modified,
                    reason=str(error.get("message") or "no reason recorded"),
                    kind=error.get("kind"),
                    http_status=_http_status(error.get("http_status")),
                    key=hmac.new(self.key, os.fsencode(str(where)), hashlib.sha256).hexdigest(),
                    receipt=path,
                )
            )
        return items, max(0, len(receipts) - MAX_FAILED)


def _receipts(root: Path, problems: list[str]) -> Iterable[tuple[float, Path]]:
    """(modified, path) of each receipt in failed/: regular files only (a FIFO or a device
    named like a receipt would block its read), hidden names skipped, links never followed.
    A folder that does not answer is a problem of the page, not an exception."""
    down = "failed/ is not answering: some failed files may not be shown"

    def not_answering(rel: PurePosixPath, exc: OSError) -> None:
        if down not in problems:
            problems.append(down)

    try:
        for rel in scan(root, on_error=not_answering):
            if not rel.name.endswith(SUFFIX):
                continue
            path = root / rel
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield info.st_mtime, path
    except OSError:
        not_answering(PurePosixPath(), OSError())


def _http_status(value: object) -> int | None:
    """The receipt's HTTP status as a number, or None (a receipt is a file anyone may edit)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999:
        return value
    return None


def _read_receipt(path: Path) -> Receipt:
    """A receipt read only if it is a regular file (never blocks on a FIFO put in its place)."""
    fd, _ = content.open_regular(path)
    with os.fdopen(fd, "rb") as file:
        loaded = json.loads(file.read(MAX_RECEIPT_BYTES + 1))
    if not isinstance(loaded, dict):
        raise ValueError("not a receipt")
    return Receipt.from_dict(loaded)


def _waiting(inbox: Path, problems: list[str]) -> Iterable[Item]:
    def down(rel: PurePosixPath, exc: OSError) -> None:
        problems.append("an inbox folder is not answering")

    try:
        for rel in scan(inbox, on_error=down):
            try:
                modified = os.lstat(inbox / rel).st_mtime
            except OSError:
                continue
            yield _item(rel, "waiting", modified)
    except OSError:
        problems.append("the inbox is not answering")


def _journal(reader: JournalView, midnight: str) -> Iterable[Item]:
    for row in reader.active():
        yield _item(row.source, "in_progress", _epoch(row.received_at))
    for row in reader.finished_since("done", midnight, MAX_DONE_TODAY):
        yield _item(row.source, "done_today", _epoch(row.finished_at))


def _item(rel: PurePosixPath, state: str, when: float | None) -> Item:
    folder = patient_folder(rel) or NO_FOLDER
    inside = rel.relative_to(folder) if folder else rel
    return Item(folder=folder, name=str(inside), state=state, when=when)


def _local_midnight() -> str:
    """Today's start in the machine's time zone, as the journal writes times (UTC, with a Z)."""
    now = datetime.now().astimezone()
    return utc_iso(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ViewCache:
    """The last view for `seconds`; one gatherer at a time, the others wait for its view."""

    def __init__(self, gather: Callable[[], View], seconds: float = CACHE_SECONDS) -> None:
        self._gather = gather
        self._seconds = seconds
        self._lock = threading.Lock()
        self._view: View | None = None
        self._at = 0.0

    def get(self, fresh: bool = False) -> View:
        with self._lock:
            now = time.monotonic()
            if fresh or self._view is None or now - self._at >= self._seconds:
                self._view = self._gather()
                self._at = time.monotonic()
            return self._view

    def forget(self) -> None:
        with self._lock:
            self._view = None
