"""Watching the inbox: watchdog's events as hints only (missed on overflow, for files written into
a folder before its watch exists, and on network shares), the observer supervised and restarted,
and which file systems need polling instead of inotify.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from pathlib import Path

from watchdog import events as watchdog_events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ingestd.observe.logs import event
from ingestd.unreachable import is_unavailable

log = logging.getLogger("ingestd.watcher")


class Hints:
    """Paths that changed, fed by the observer thread and drained by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._folders: set[str] = set()
        self.wake = threading.Event()

    def add(self, path: str, is_folder: bool = False) -> None:
        with self._lock:
            (self._folders if is_folder else self._paths).add(path)
        self.wake.set()

    def drain(self) -> tuple[set[str], set[str]]:
        with self._lock:
            paths, folders = self._paths, self._folders
            self._paths, self._folders = set(), set()
        return paths, folders


class _Handler(FileSystemEventHandler):
    """Only enqueues: an exception here would silently kill watchdog's thread."""

    def __init__(self, hints: Hints) -> None:
        self._hints = hints

    def on_any_event(self, fs_event: FileSystemEvent) -> None:
        try:
            kind = fs_event.event_type
            if kind in IGNORED_EVENT_TYPES:
                return  # our own reads (opened, closed unwritten) must not wake us again
            if fs_event.is_directory:
                # A folder that appears (created, or moved in with its files) is scanned; a
                # folder's own "modified" comes with every file event inside it anyway.
                if kind in ("created", "moved"):
                    path = getattr(fs_event, "dest_path", None) or fs_event.src_path
                    self._hints.add(os.fsdecode(path), True)
                return
            for attr in ("src_path", "dest_path"):
                path = getattr(fs_event, attr, None)
                if path:
                    self._hints.add(os.fsdecode(path), False)
        except Exception as exc:  # noqa: BLE001 - must never escape into the observer thread
            # Only the type: an OS error's message can carry a path (patient data).
            event(log, logging.ERROR, "watch_handler_error", error=type(exc).__name__)


NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre"}
)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the file system `path` is on, from the mount table ("" when unknown)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        # Mount points escape space, tab, newline and backslash as octal.
        point = parts[4].encode().decode("unicode_escape")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, rest.split()[0]
    return best_type


def needs_polling(fstype: str) -> bool:
    """inotify sees only this machine's writes: on a network or FUSE file system, poll."""
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


# Events ingestd does not need. The daemon opens waiting files itself (the writer probe, the
# type check): inotify would report those opens and closes, each one waking the settle cycle
# again — a loop that kept a large inbox busy forever and overflowed the event queue. "modified"
# (IN_MODIFY for every write call, IN_ATTRIB) adds nothing the settler does not see: a file it
# tracks is looked at again every settle period until two looks agree, and a writer's close
# (IN_CLOSE_WRITE) makes it look at once; a scanner writing 20 MB in 64 KiB blocks would
# otherwise wake the daemon 320 times, and each filed file once more (the link count).
IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write", "modified"})
WANTED_EVENTS = tuple(
    getattr(watchdog_events, name)
    for name in (
        "FileCreatedEvent", "FileMovedEvent", "FileDeletedEvent", "FileClosedEvent",
        "DirCreatedEvent", "DirMovedEvent", "DirDeletedEvent",
    )
    if hasattr(watchdog_events, name)
)  # fmt: skip


def _schedule(observer: BaseObserver, handler: FileSystemEventHandler, root: Path) -> None:
    """Watch `root` recursively, asking inotify only for the events we use where this
    watchdog can be told (event_filter, watchdog 4+); older ones deliver all and the handler
    drops what it does not need."""
    if "event_filter" in inspect.signature(observer.schedule).parameters:
        observer.schedule(handler, str(root), recursive=True, event_filter=list(WANTED_EVENTS))  # type: ignore[call-arg, unused-ignore]
    else:
        observer.schedule(handler, str(root), recursive=True)


class Observation:
    """A supervised watchdog observer on the inbox root (inotify, or polling when asked)."""

    def __init__(self, root: Path, hints: Hints, poll: bool = False) -> None:
        self.root = root
        self.hints = hints
        self.poll = poll
        self._observer: BaseObserver | None = None
        self._failing = False  # a failure is logged once, not at every restart attempt
        # Why the last start failed when the inbox itself did not answer (the daemon pauses
        # the inbox for it: one path for a clean unmount and a share that died).
        self.unavailable: OSError | None = None

    def start(self) -> bool:
        """Start watching; False (logged) when the inbox cannot be watched right now."""
        fstype = filesystem_type(self.root)
        if not self.poll and needs_polling(fstype):
            event(
                log,
                logging.WARNING,
                "watch_polling",
                filesystem=fstype,
                reason="inotify cannot see writes from other machines on this file system",
            )
            self.poll = True
        observer: BaseObserver = PollingObserver(timeout=2) if self.poll else Observer()
        observer.daemon = True
        self.unavailable = None
        try:
            _schedule(observer, _Handler(self.hints), self.root)
            observer.start()
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or is_unavailable(exc):
                # The inbox (a share?) is not there or not answering: the caller pauses it.
                self.unavailable = exc
                return False
            if self.poll:
                self._failed(exc.strerror or type(exc).__name__)
                return False
            # Out of inotify watches or instances: polling still sees everything, slower.
            event(log, logging.ERROR, "watch_fallback_polling", reason=exc.strerror)
            self.poll = True
            return self.start()
        self._observer = observer
        self._failing = False
        return True

    def _failed(self, reason: str) -> None:
        if not self._failing:
            event(log, logging.ERROR, "watch_failed", reason=reason)
        self._failing = True

    def alive(self) -> bool:
        """The dispatcher and every emitter run (an emitter dies with its watched folder while
        the dispatcher goes on)."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = list(observer.emitters)
        return bool(emitters) and all(emitter.is_alive() for emitter in emitters)

    def ensure_alive(self) -> bool:
        """Restart a dead observer; True when a restart happened (the caller rescans)."""
        if self.alive():
            return False
        self.stop()
        if self.start():
            event(log, logging.WARNING, "watch_restarted")
            return True
        return False

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None
