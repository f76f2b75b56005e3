"""Intake: from hints and scans to claimed files.

Owns what the loop knows of the inbox before a file is claimed: watchdog's hints, the scans in
progress (listed a slice per loop turn, so uploads start while a big inbox is listed), folders
polled because they are on network shares, the settler that says when a file is ready, the
ready queue, the `ignore` rules judged before claiming (an ignored file is never moved), and
the claim itself. Files are claimed only as workers free up, so a backlog stays in the inbox.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from ingestd import content
from ingestd.config.model import Config
from ingestd.daemon.folders import Folders
from ingestd.delivery.decide import Rejected, judge, reading
from ingestd.inbox.claims import WORK_DIR, Claimer
from ingestd.inbox.owners import Owners
from ingestd.inbox.scan import INBOX_ROOT, scan
from ingestd.inbox.settle import Ready, Settler
from ingestd.inbox.watch import Hints
from ingestd.journal import ClaimLost, JournalLike, Row
from ingestd.names import is_ignored_path
from ingestd.observe.logs import Masker, event

log = logging.getLogger("ingestd.daemon")

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
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
        journal: JournalLike,
        masker: Masker,
        once: bool,
        instance: str = "",
    ) -> None:
        self._config = config
        self.claimer = claimer
        self.journal = journal
        self.masker = masker
        self.once = once
        self.owners = Owners(instance)  # a fleet's live instances, set at each heartbeat
        first = config()
        self.hints = Hints()
        self.settler = Settler(
            first.paths.inbox,
            settle_for=lambda rel: self._config().watch.settle_for(rel),
            empty_fail_seconds=first.watch.empty_fail_seconds,
            unknown_type_grace_seconds=first.watch.unknown_type_grace_seconds,
        )
        self.folders = Folders(
            config,
            claimer,
            masker,
            self.hints,
            on_resume=self._resume,
            on_inbox_lost=self._scans_clear,
            notice=self.settler.notice,
        )
        self._ready: collections.deque[Ready] = collections.deque()
        self._ready_paths: set[PurePosixPath] = set()  # what _ready holds, so never twice
        self._scans: list[tuple[Iterator[PurePosixPath], bool]] = []  # (scan, whole inbox)
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

    def start_watching(self) -> None:
        if self.folders.inbox_answers():
            self.folders.watch()

    def rescan_if_restarted(self) -> bool:
        """A scan for what happened while the observer was down, if it had to be restarted.
        False when the inbox does not answer (nothing else to do with it then)."""
        if self.folders.inbox_down():
            return False
        if self.folders.watch():
            self.scan_all()
        return True

    def periodic_scan(self) -> None:
        if not self.folders.inbox_down() and (self.folders.watch() or not self._scans):
            self.scan_all()

    def _scan(self, start: PurePosixPath = INBOX_ROOT) -> Iterator[PurePosixPath]:
        return scan(
            self.inbox, start, on_folder=self.folders.saw_folder, on_error=self.folders.failed
        )

    def _resume(self, rel: PurePosixPath) -> None:
        """A folder answers again: list it for what arrived meanwhile."""
        if rel == INBOX_ROOT:
            if not self.once:
                self.folders.watch()
            self.scan_all()
        else:
            self._scans.append((self._scan(rel), False))
        self.hints.wake.set()

    def _scans_clear(self) -> None:
        self._scans.clear()

    def check_folders(self) -> None:
        self.folders.check()

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
        """Look at the files whose settle time is up; the ready ones join the queue. In a fleet,
        a file another instance owns is left to it for a while (inbox/owners.py)."""
        for rel in list(self.settler.due_paths()):
            settle = self._config().watch.settle_for(rel)
            wait = self.owners.wait(rel, self.settler.age(rel), settle)
            if wait > 0:
                self.settler.postpone(rel, wait)
                continue
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
            if self.folders.is_down(ready.rel.parent):
                continue  # found again by the scan when its folder answers
            if self._ignores(ready):
                self.settler.hold(ready.rel)
                continue
            claimed = self.claimer.claim(ready)
            if claimed is None:
                self.settler.notice(ready.rel)
                continue
            if ready.empty_expired:
                try:
                    claimed = self.journal.change(
                        claimed,
                        size=0,
                        sha256=EMPTY_SHA256,  # its content is known: no bytes
                        state="rejected",
                        error=dict(EMPTY_ERROR),
                    )
                except ClaimLost:
                    continue  # taken over meanwhile: the survivor finishes it
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
