"""Intake: from hints and scans to claimed files.

Owns what the loop knows of the inbox before a file is claimed: watchdog's hints, the scans in
progress (listed a slice per loop turn, so uploads start while a big inbox is listed), folders
polled because they are on network shares, the settler that says when a file is ready, the
ready queue, the `ignore` rules judged before claiming (an ignored file is never moved), and
the claim itself. Files are claimed only as workers free up, so a backlog stays in the inbox.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from ingestd import content
from ingestd.config.load import Config
from ingestd.delivery.decide import Rejected, judge, reading
from ingestd.inbox.claims import WORK_DIR, Claimer
from ingestd.inbox.watch import INBOX_ROOT, Hints, Observation, Ready, Settler, scan
from ingestd.journal import Journal, Row
from ingestd.names import is_ignored_path
from ingestd.observe.logs import Masker, event

log = logging.getLogger("ingestd.daemon")

SCAN_SLICE = 500  # paths listed per loop turn, so uploads start while a big inbox is listed

EMPTY_ERROR = {
    "kind": "empty",
    "message": "the file stayed empty (0 bytes); the scanner or fax software did not write it: "
    "scan the document again",
}


class Intake:
    def __init__(
        self,
        config: Callable[[], Config],
        claimer: Claimer,
        journal: Journal,
        masker: Masker,
        poll: bool,
    ) -> None:
        self._config = config
        self.claimer = claimer
        self.journal = journal
        self.masker = masker
        first = config()
        self.hints = Hints()
        self.settler = Settler(
            first.paths.inbox,
            settle_for=lambda rel: self._config().watch.settle_for(rel),
            empty_fail_seconds=first.watch.empty_fail_seconds,
            unknown_type_grace_seconds=first.watch.unknown_type_grace_seconds,
        )
        self.observation = Observation(first.paths.inbox, self.hints, poll=poll)
        self._ready: collections.deque[Ready] = collections.deque()
        self._ready_paths: set[PurePosixPath] = set()  # what _ready holds, so never twice
        self._scans: list[tuple[Iterator[PurePosixPath], bool]] = []  # (scan, whole inbox)
        self._polled: set[PurePosixPath] = set()
        self.last_full_scan: float | None = None  # wall clock when one last ended

    @property
    def inbox(self) -> Path:
        return self._config().paths.inbox

    def reconfigure(self, config: Config) -> None:
        self.settler.empty_fail_seconds = config.watch.empty_fail_seconds
        self.settler.unknown_type_grace_seconds = config.watch.unknown_type_grace_seconds

    # --- noticing --------------------------------------------------------------------------

    def scan_all(self) -> None:
        self._scans.append((self._scan(), True))

    def rescan_if_restarted(self) -> None:
        """A scan for what happened while the observer was down, if it had to be restarted."""
        if self.observation.ensure_alive():
            self.scan_all()

    def periodic_scan(self) -> None:
        if self.observation.ensure_alive() or not self._scans:
            self.scan_all()

    def _scan(self, start: PurePosixPath = INBOX_ROOT) -> Iterator[PurePosixPath]:
        return scan(self.inbox, start, on_folder=self._saw_folder)

    def _saw_folder(self, rel: PurePosixPath) -> None:
        """Remember folders that must be polled (a share written by other machines)."""
        if self._config().watch.poll_for(rel) and not any(p in self._polled for p in rel.parents):
            self._polled.add(rel)

    def poll_folders(self) -> None:
        """inotify sees nothing that other clients of an NFS/SMB mount write: list those
        folders every few seconds instead."""
        inbox, watch = self.inbox, self._config().watch
        for folder in sorted(self._polled):
            if not watch.poll_for(folder) or not (inbox / folder).is_dir():
                self._polled.discard(folder)  # gone, or no longer polled after a reload
                continue
            for rel in scan(inbox, folder):
                self.settler.notice(rel)

    def take_hints(self) -> None:
        inbox = self.inbox
        paths, folders = self.hints.drain()
        for raw in paths | folders:
            rel = _relative(inbox, raw)
            if rel is None or is_ignored_path(rel):
                continue
            if raw in folders:
                self._scans.append((self._scan(rel), False))
            else:
                self.settler.notice(rel)

    def advance_scans(self) -> None:
        budget = SCAN_SLICE
        while self._scans and budget > 0:
            try:
                rel = next(self._scans[0][0])
            except StopIteration:
                if self._scans.pop(0)[1]:
                    self.last_full_scan = time.time()
                continue
            self.settler.notice(rel)
            budget -= 1
        if self._scans:
            self.hints.wake.set()  # more to list: come straight back

    def look(self) -> None:
        """Look at the files whose settle time is up; the ready ones join the queue."""
        for rel in list(self.settler.due_paths()):
            ready = self.settler.look(rel)
            if ready is not None and rel not in self._ready_paths:
                self._ready.append(ready)
                self._ready_paths.add(rel)

    # --- claiming --------------------------------------------------------------------------

    def claim(self, free: Callable[[], int], stopping: Callable[[], bool]) -> Iterator[Row]:
        """Claim ready files while workers are free; yields each claimed row."""
        while self._ready and free() > 0 and not stopping():
            ready = self._ready.popleft()
            self._ready_paths.discard(ready.rel)
            if self._ignores(ready):
                self.settler.hold(ready.rel)
                continue
            claimed = self.claimer.claim(ready)
            if claimed is None:
                self.settler.notice(ready.rel)
                continue
            if ready.empty_expired:
                claimed = self.journal.change(
                    claimed, size=0, state="rejected", error=dict(EMPTY_ERROR)
                )
            yield claimed

    def _ignores(self, ready: Ready) -> bool:
        """Whether a rule says to leave this file alone: judged before claiming, so an
        ignored file is never moved. Anything else (including errors) is the pipeline's."""
        config = self._config()
        if ready.snapshot is None or not any(rule.action == "ignore" for rule in config.rules):
            return False
        try:
            with reading(config.paths.inbox / ready.rel, ready.format) as read:
                received = datetime.fromtimestamp(ready.received, UTC)
                _, verdict = judge(config, ready.rel, read, received)
        except (OSError, content.UnsafeFile, Rejected):
            return False
        ignored = verdict.decision is not None and verdict.decision.action == "ignore"
        if ignored:
            event(log, logging.INFO, "file_ignored", file=self.masker.path(ready.rel))
        return ignored

    # --- what the loop asks ----------------------------------------------------------------

    def hold(self, rel: PurePosixPath) -> None:
        self.settler.hold(rel)

    def notice(self, rel: PurePosixPath) -> None:
        self.settler.notice(rel)

    def has_ready(self) -> bool:
        return bool(self._ready)

    def waiting(self) -> int:
        """Files seen in the inbox and not yet claimed."""
        return len(self.settler) + len(self._ready)

    def busy(self) -> bool:
        """Whether anything is still being listed, settled or queued (for `once`)."""
        return bool(self._scans or self._ready or self.settler.busy())


def _relative(inbox: Path, raw: str) -> PurePosixPath | None:
    try:
        rel = PurePosixPath(os.path.relpath(raw, inbox))
    except ValueError:
        return None
    if rel.parts and (rel.parts[0] == ".." or rel == PurePosixPath(".")):
        return None
    if rel.parts[: len(WORK_DIR.parts)] == WORK_DIR.parts:
        return None
    return rel
