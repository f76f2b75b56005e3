"""Finding finished files in the inbox: watchdog events as hints, scans as the truth.

Watchdog's events only mark a path as worth a look (they are missed on overflow, for files written
into a folder before its watch exists, and on network shares), so the inbox is also scanned at
start-up, periodically, and whenever a new folder appears. A file is *ready* when two looks at
least the settle time apart see the same size, mtime, ctime and inode, nobody holds it open for
writing, it is not empty, and its content is recognised (or has been quiet for the grace time).
"""

from __future__ import annotations

import errno
import heapq
import inspect
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from watchdog import events as watchdog_events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ingestd import content
from ingestd.logs import event
from ingestd.names import is_ignored_name, is_ignored_path
from ingestd.shares import is_unavailable

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
        observer.schedule(handler, str(root), recursive=True, event_filter=list(WANTED_EVENTS))  # type: ignore[call-arg]
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


INBOX_ROOT = PurePosixPath()


def scan(
    root: Path,
    start: PurePosixPath = INBOX_ROOT,
    on_folder: Callable[[PurePosixPath], None] | None = None,
    on_error: Callable[[PurePosixPath, OSError], None] | None = None,
) -> Iterator[PurePosixPath]:
    """Every non-folder path below `root/start`, inbox-relative, skipping hidden and temporary
    names; never follows links. Lazy: the tree is never held in memory. `on_folder` is told of
    every folder listed, `on_error` of every folder that could not be listed for a reason
    other than being gone or forbidden (a share that stopped answering); without it, such an
    error is raised."""
    stack = [start]
    while stack:
        rel = stack.pop()
        if on_folder is not None and rel.parts:
            on_folder(rel)
        try:
            with os.scandir(root / rel) as entries:
                for entry in entries:
                    if is_ignored_name(entry.name):
                        continue
                    child = rel / entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(child)
                            continue
                    except OSError:
                        continue
                    yield child
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        except OSError as exc:
            if on_error is None:
                raise
            on_error(rel, exc)


@dataclass
class _Pending:
    first_seen: float  # wall clock, for received_at
    snapshot: content.Snapshot | None
    changed_at: float  # monotonic
    due: float


@dataclass(frozen=True)
class Ready:
    rel: PurePosixPath
    received: float  # wall clock when first seen
    snapshot: content.Snapshot | None  # None for non-regular paths
    empty_expired: bool = False
    format: str | None = None  # the MIME type the last look detected (None: not looked for)


@dataclass
class Settler:
    """Tracks files that are not ready yet and says when each one is."""

    root: Path
    settle_for: Callable[[PurePosixPath], float]
    empty_fail_seconds: float = 3600.0
    unknown_type_grace_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _pending: dict[PurePosixPath, _Pending] = field(default_factory=dict)
    _heap: list[tuple[float, PurePosixPath]] = field(default_factory=list)
    _held: dict[PurePosixPath, content.Snapshot | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pending)

    def busy(self) -> bool:
        """True while some tracked file may still become ready (empty files do not count)."""
        return any(p.snapshot is None or p.snapshot.size > 0 for p in self._pending.values())

    def oldest_wall(self) -> float | None:
        return min((p.first_seen for p in self._pending.values()), default=None)

    def hold(self, rel: PurePosixPath) -> None:
        """Leave a path alone (a rule ignores it) until it changes."""
        self._pending.pop(rel, None)
        self._held[rel] = _snapshot(self.root / rel)

    def notice(self, rel: PurePosixPath) -> None:
        """A hint or a scan saw `rel`: look at it soon."""
        if is_ignored_path(rel):
            return
        if rel in self._held:
            if _snapshot(self.root / rel) == self._held[rel]:
                return
            del self._held[rel]  # changed (or gone): judge it again
        now = self.clock()
        entry = self._pending.get(rel)
        if entry is None:
            self._pending[rel] = _Pending(time.time(), None, now, now)
            heapq.heappush(self._heap, (now, rel))
        elif entry.due > now:
            entry.due = now
            heapq.heappush(self._heap, (now, rel))

    def next_due(self) -> float | None:
        while self._heap:
            due, rel = self._heap[0]
            entry = self._pending.get(rel)
            if entry is None or entry.due != due:
                heapq.heappop(self._heap)  # stale
                continue
            return due
        return None

    def due_paths(self) -> Iterator[PurePosixPath]:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, rel = heapq.heappop(self._heap)
            entry = self._pending.get(rel)
            if entry is not None and entry.due == due:
                yield rel

    def _later(self, rel: PurePosixPath, entry: _Pending, when: float) -> None:
        entry.due = when
        heapq.heappush(self._heap, (when, rel))

    def look(self, rel: PurePosixPath) -> Ready | None:
        """Look once at a due path: Ready, or None (gone, or looked at again later)."""
        entry = self._pending.get(rel)
        if entry is None:
            return None
        path = self.root / rel
        try:
            st = os.lstat(path)
        except OSError:
            del self._pending[rel]
            return None
        now = self.clock()
        if stat.S_ISDIR(st.st_mode):
            del self._pending[rel]
            return None
        settle = self.settle_for(rel)
        if not stat.S_ISREG(st.st_mode):
            del self._pending[rel]
            return Ready(rel, entry.first_seen, None)
        snap = content.Snapshot.of(st)
        if snap != entry.snapshot:
            entry.snapshot = snap
            entry.changed_at = now
            self._later(rel, entry, now + settle)
            return None
        quiet = now - entry.changed_at
        if quiet < settle:
            self._later(rel, entry, entry.changed_at + settle)
            return None
        if snap.size == 0:
            age = time.time() - entry.first_seen
            if age >= self.empty_fail_seconds:
                del self._pending[rel]
                return Ready(rel, entry.first_seen, snap, empty_expired=True)
            self._later(rel, entry, now + min(max(settle, 5.0), self.empty_fail_seconds - age))
            return None
        if content.writer_active(path):
            self._later(rel, entry, now + settle)
            return None
        fmt = _format_of(path) if quiet < self.unknown_type_grace_seconds else None
        if fmt == "":
            # A preallocated file may still be all zeros: look again before calling it unknown.
            self._later(
                rel,
                entry,
                min(now + max(settle, 1.0), entry.changed_at + self.unknown_type_grace_seconds),
            )
            return None
        del self._pending[rel]
        # The type travels with the claim (the claim checks it is still this inode, size and
        # mtime), so the pipeline does not detect it a second time.
        return Ready(rel, entry.first_seen, snap, format=fmt)


def _snapshot(path: Path) -> content.Snapshot | None:
    try:
        return content.Snapshot.of(os.lstat(path))
    except OSError:
        return None


def _format_of(path: Path) -> str | None:
    """The detected MIME type, "" when not recognised, None when it cannot be read (the
    pipeline reports why)."""
    try:
        fd, _ = content.open_regular(path)
    except (OSError, content.UnsafeFile):
        return None
    try:
        return content.detect_format(fd)
    finally:
        os.close(fd)


BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 15.0


@dataclass
class _Outage:
    reason: str
    errno: str
    since: float  # wall clock
    failures: int
    retry_at: float  # monotonic


@dataclass
class Availability:
    """Inbox folders that stopped answering (a share whose mount died): each one is paused,
    logged once, retried with a backoff, and resumed (the caller scans it) when it answers.
    The inbox itself is the folder `INBOX_ROOT`; a folder below one that is down counts as
    down too."""

    describe: Callable[[PurePosixPath], str]  # a folder as the log may name it (masked)
    clock: Callable[[], float] = time.monotonic
    _down: dict[PurePosixPath, _Outage] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._down)

    def is_down(self, rel: PurePosixPath) -> bool:
        return any(folder in self._down for folder in (rel, *rel.parents))

    def inbox_down(self) -> bool:
        return INBOX_ROOT in self._down

    def failed(self, rel: PurePosixPath, exc: OSError | None, reason: str = "") -> None:
        """`rel` did not answer: pause it (one ERROR line when this starts an outage)."""
        reason = reason or (exc.strerror if exc is not None and exc.strerror else "") or "error"
        name = _errno_name(exc)
        outage = self._down.get(rel)
        now = self.clock()
        if outage is None:
            outage = self._down[rel] = _Outage(reason, name, time.time(), 0, now)
            event(
                log,
                logging.ERROR,
                "folder_unavailable",
                folder=self.describe(rel),
                reason=reason,
                errno=name or None,
                action="files there wait; ingestd retries and scans it when it answers again "
                "(check the share's mount)",
            )
        outage.failures += 1
        backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (outage.failures - 1))
        outage.retry_at = now + backoff

    def answered(self, rel: PurePosixPath) -> bool:
        """`rel` answered: True when that ends an outage (the caller scans it)."""
        outage = self._down.pop(rel, None)
        if outage is None:
            return False
        event(
            log,
            logging.WARNING,
            "folder_available",
            folder=self.describe(rel),
            down_seconds=round(time.time() - outage.since, 1),
        )
        return True

    def forget(self, rel: PurePosixPath) -> None:
        """`rel` is gone for good (removed, or no longer watched): nothing to wait for."""
        self._down.pop(rel, None)

    def due(self) -> list[PurePosixPath]:
        """Folders to try again now, the inbox first."""
        now = self.clock()
        return sorted(rel for rel, outage in self._down.items() if outage.retry_at <= now)

    def next_due(self) -> float | None:
        return min((outage.retry_at for outage in self._down.values()), default=None)


def _errno_name(exc: OSError | None) -> str:
    if exc is None or exc.errno is None:
        return ""
    return errno.errorcode.get(exc.errno, str(exc.errno))
