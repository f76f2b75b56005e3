"""The daemon: the main loop that turns hints and scans into claimed files for the workers.

One thread (the caller's) owns the watcher state, the scans and the claiming; worker threads run
the pipeline for one journal row at a time. `run` is `ingestd run`; `once=True` is `ingestd once`
(process what is in the inbox now, then return).

Signals: SIGTERM/SIGINT stop claiming, let in-flight uploads finish within the grace period and
leave the rest parked in the journal; a second one exits at once (the journal is crash-safe).
SIGHUP reloads the config: an invalid one is logged and the old one keeps running.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import FrameType

from ingestd import content, notify
from ingestd.assess import Rejected, evaluate
from ingestd.claims import WORK_DIR, Claimer, instance_id
from ingestd.config import Config, ConfigError, load_config
from ingestd.filing import make_folders
from ingestd.health import TargetHealth
from ingestd.journal import ACTIVE_STATES, FINAL_STATES, Journal, Row
from ingestd.logs import event, load_masker
from ingestd.metrics import Metrics, MetricsServer, Snapshot, start_server
from ingestd.names import is_ignored_path
from ingestd.notify import watchdog_interval
from ingestd.pipeline import Outcome, Pipeline
from ingestd.shares import is_unavailable
from ingestd.status import publish
from ingestd.targets import make_target
from ingestd.targets.base import Target
from ingestd.watcher import INBOX_ROOT, Availability, Hints, Observation, Ready, Settler, scan

log = logging.getLogger("ingestd.daemon")

SCAN_SLICE = 500  # paths listed per loop turn, so uploads start while a big inbox is listed
SHUTDOWN_GRACE_SECONDS = 30.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CONFIG_CHECK_EVERY = 2.0
LEASE_TOUCH_EVERY = 10.0  # well inside any sensible claim lease
POLL_EVERY = 2.0
ONCE_PATIENCE_SECONDS = 30.0  # folders on network shares, listed this often


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    waiting: int = 0


class Daemon:
    def __init__(self, config: Config, once: bool = False) -> None:
        self._config = config
        self.once = once
        paths = config.paths
        for folder in (paths.inbox, paths.done, paths.failed):
            _make_unless_unavailable(folder)
        state_dir = paths.state.parent
        self.journal = Journal(paths.state)
        self.masker = load_masker(state_dir)
        self.claimer = Claimer(paths.inbox, self.journal, instance_id(state_dir), self.masker)
        try:
            self.claimer.prepare()
        except OSError as exc:
            if not is_unavailable(exc):
                raise
            # A share that is down at start-up: the loop pauses the inbox until it answers.
        self._targets: dict[str, Target] = {}
        self._health: dict[str, TargetHealth] = {}
        self._build_targets(config)
        self.stopping = threading.Event()
        self._stop_requests = 0
        self._reload_requested = False
        self._config_stamp = _stamp(config.file)
        self._config_checked_at = time.monotonic()
        self.metrics = Metrics()
        self.metrics.watch(self.snapshot)
        self._metrics_server: MetricsServer | None = None
        self.hints = Hints()
        self.settler = Settler(
            paths.inbox,
            settle_for=lambda rel: self._config.watch.settle_for(rel),
            empty_fail_seconds=config.watch.empty_fail_seconds,
            unknown_type_grace_seconds=config.watch.unknown_type_grace_seconds,
        )
        self.observation = Observation(paths.inbox, self.hints, poll=config.watch.poll)
        self.availability = Availability(describe=self._describe_folder)
        self._inbox_was_mount = os.path.ismount(paths.inbox)
        self.claimer.on_unavailable = self._folder_failed
        self.pipeline = Pipeline(
            config=lambda: self._config,
            journal=self.journal,
            claimer=self.claimer,
            targets=lambda: self._targets,
            health=self._health_of,
            masker=self.masker,
            stopping=self.stopping,
            target_up=self._target_up,
            metrics=self.metrics,
        )
        self._work: queue.Queue[tuple[Row, bool] | None] = queue.Queue()
        self._finished: queue.Queue[Outcome] = queue.Queue()
        self._lock = threading.Lock()
        self._watchdog_every = watchdog_interval()
        self._in_flight: set[int] = set()
        self._ready: collections.deque[Ready] = collections.deque()
        self._ready_paths: set[PurePosixPath] = set()  # what _ready holds, so never twice
        self._resumed: set[int] = set()
        self._scans: list[tuple[Iterator[PurePosixPath], bool]] = []  # (scan, whole inbox)
        self._last_full_scan: float | None = None  # wall clock when one last ended
        self._started = time.time()
        self._last_progress = time.monotonic()  # `once` gives up on waits only after none
        self._polled: set[PurePosixPath] = set()
        self._journal_check_at = 0.0
        self.summary = Summary()
        self._workers = [
            threading.Thread(target=self._worker, name=f"ingestd-worker-{n}", daemon=True)
            for n in range(self.capacity)
        ]

    @property
    def config(self) -> Config:
        return self._config

    @property
    def capacity(self) -> int:
        # Twice the upload slots (TargetHealth.slots caps the sends): while some files are
        # being sent, others are read, decided and filed (fsyncs), so an upload slot never
        # waits for local work.
        return 2 * sum(t.concurrency for t in self._config.targets.values()) + 2

    def _build_targets(self, config: Config) -> None:
        targets = {}
        for name, settings in config.targets.items():
            current = self._targets.get(name)
            if current is not None and self._config.targets.get(name) == settings:
                targets[name] = current
                continue
            # New or changed (fixed credentials, say): a fresh start, not the old pause.
            targets[name] = make_target(settings)
            self._health[name] = TargetHealth(name, settings.concurrency)
        self._targets = targets

    def _health_of(self, name: str) -> TargetHealth:
        return self._health[name]

    def _target_up(self, name: str) -> None:
        """A target answers again (worker thread): its waiting files may go at once."""
        self.journal.make_due()
        self._journal_check_at = 0.0
        self.hints.wake.set()

    # --- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requests += 1
        if self._stop_requests > 1:
            # Second signal: leave now. Every claimed file is parked in the journal.
            os._exit(0)
        self.stopping.set()
        self.hints.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True
        self.hints.wake.set()

    def request_stop(self) -> None:
        self._on_stop(signal.SIGTERM, None)

    # --- workers ---------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            row, resumed = item
            try:
                outcome = self.pipeline.process(row, resumed=resumed)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                # Only the type: messages of OS errors can carry a path (patient data).
                event(
                    log,
                    logging.ERROR,
                    "worker_error",
                    file=self.masker.path(row.source),
                    error=type(exc).__name__,
                )
                self.journal.update(row.id, next_attempt_at=time.time() + 30)
                outcome = Outcome("deferred", row.source)
            self._finished.put(outcome)
            with self._lock:
                self._in_flight.discard(row.id)
            self.hints.wake.set()

    def _submit(self, row: Row) -> None:
        with self._lock:
            self._in_flight.add(row.id)
        resumed = row.id in self._resumed
        self._resumed.discard(row.id)
        self._work.put((row, resumed))

    def _free(self) -> int:
        with self._lock:
            return self.capacity - len(self._in_flight)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> Summary:
        for row in self.claimer.recover():
            self._resumed.add(row.id)
        known = {row.work for row in self.journal.active()}
        try:
            orphans = self.claimer.orphans(known)
        except OSError:
            orphans = []  # the inbox does not answer: looked for at the next start
        for orphan in orphans:
            self.claimer.return_orphan(orphan)
        for worker in self._workers:
            worker.start()
        if not self.once:
            if self._inbox_answers():
                self._watch()
            if self._config.metrics_listen is not None:
                self._metrics_server = start_server(
                    self._config.metrics_listen, self.metrics, self.snapshot
                )
        self._scans.append((self._scan(), True))
        next_scan = time.monotonic() + self._config.watch.scan_interval_seconds
        last_watchdog = 0.0
        next_poll = time.monotonic() + POLL_EVERY
        next_lease = 0.0
        self._publish_status()
        notify.notify("READY=1", "STATUS=scanning the inbox")
        event(
            log,
            logging.INFO,
            "started",
            mode="once" if self.once else "run",
            targets=len(self._targets),
            rules=len(self._config.rules),
        )
        while not self.stopping.is_set():
            if self._reload_requested or self._config_changed():
                self._reload()
            self._take_hints()
            self._advance_scans()
            for rel in list(self.settler.due_paths()):
                ready = self.settler.look(rel)
                if ready is not None and rel not in self._ready_paths:
                    self._ready.append(ready)
                    self._ready_paths.add(rel)
            self._dispatch()
            self._collect()
            now = time.monotonic()
            if not self.once:
                if now >= next_scan:
                    if not self.availability.inbox_down() and (self._watch() or not self._scans):
                        self._scans.append((self._scan(), True))
                    next_scan = now + self._config.watch.scan_interval_seconds
                if now - last_watchdog >= self._watchdog_every:
                    notify.notify("WATCHDOG=1", self._status_line())
                    self._publish_status()
                    last_watchdog = now
                if now >= next_poll:
                    self._check_folders()
                    next_poll = now + POLL_EVERY
                if now >= next_lease:
                    self._keep_lease()
                    next_lease = now + LEASE_TOUCH_EVERY
            elif self._once_finished():
                break
            self._sleep(next_scan)
        return self._shutdown()

    def _keep_lease(self) -> None:
        """Renew this instance's lease and take over claims of instances gone past theirs."""
        if self.availability.inbox_down():
            return
        if self._watch():
            self._scans.append((self._scan(), True))  # what happened while it was down
        for other in self.claimer.stale_instances(self._config.watch.claim_lease_seconds):
            for row in self.claimer.take_over(other):
                self._resumed.add(row.id)
        self._journal_check_at = 0.0

    def _scan(self, start: PurePosixPath = INBOX_ROOT) -> Iterator[PurePosixPath]:
        inbox = self._config.paths.inbox
        return scan(inbox, start, on_folder=self._saw_folder, on_error=self._folder_failed)

    # --- folders that stop answering (network shares) ---------------------------------------

    def _describe_folder(self, rel: PurePosixPath) -> str:
        return "." if rel == INBOX_ROOT else self.masker.path(rel)

    def _watch(self) -> bool:
        """(Re)start the inbox observer if it is not running; True when it was (re)started.
        An inbox that does not answer is paused rather than watched."""
        restarted = self.observation.ensure_alive()
        failure = self.observation.unavailable
        if failure is not None:
            self.observation.unavailable = None
            self._inbox_failed(failure)
        return restarted

    def _inbox_failed(self, exc: OSError | None) -> None:
        if exc is None or isinstance(exc, FileNotFoundError):
            reason = "the inbox folder is missing (a share that is not mounted?)"
            self.availability.failed(INBOX_ROOT, exc, reason)
        else:
            self.availability.failed(INBOX_ROOT, exc)
        self._scans.clear()  # each would fail folder by folder; a scan follows the return

    def _inbox_answers(self) -> bool:
        """Look at the inbox (its work folder: a clean unmount leaves a bare mount point);
        pause it or resume it as it answers."""
        try:
            present = self.claimer.work_folder_present()
        except OSError as exc:
            self._inbox_failed(exc)
            return False
        if not present and not self._work_folder_remade():
            self._inbox_failed(None)
            return False
        if not self._inbox_was_mount:  # a share mounted after start-up counts too
            self._inbox_was_mount = os.path.ismount(self._config.paths.inbox)
        if self.availability.answered(INBOX_ROOT):
            self._resume(INBOX_ROOT)
        return True

    def _work_folder_remade(self) -> bool:
        """Make the work folder again when the inbox is there but was emptied (removed and
        made anew); never on a bare mount point: an inbox that was a mount point at start-up
        and is not one now is a share that is not mounted."""
        inbox = self._config.paths.inbox
        try:
            if not inbox.is_dir() or (self._inbox_was_mount and not os.path.ismount(inbox)):
                return False
            self.claimer.prepare()
        except OSError:
            return False
        event(log, logging.WARNING, "work_folder_made", action="the inbox had been emptied")
        return True

    def _folder_failed(self, rel: PurePosixPath, exc: OSError) -> None:
        """A folder did not answer: pause it, or the whole inbox when that is what died."""
        if self.availability.is_down(rel):
            return
        if rel == INBOX_ROOT or not self._inbox_answers():
            if rel == INBOX_ROOT:
                self._inbox_failed(exc)
            return
        self.availability.failed(rel, exc)

    def _resume(self, rel: PurePosixPath) -> None:
        """A folder answers again: list it for what arrived meanwhile."""
        if rel == INBOX_ROOT:
            if not self.once:
                self._watch()
            self._scans.append((self._scan(), True))
        else:
            self._scans.append((self._scan(rel), False))
        self.hints.wake.set()

    def _check_folders(self) -> None:
        """Every POLL_EVERY seconds: is the inbox there, do paused folders answer again, and
        the folders that are polled."""
        availability = self.availability
        if availability.inbox_down() and INBOX_ROOT not in availability.due():
            return
        if not self._inbox_answers():
            return
        for rel in availability.due():
            try:
                with os.scandir(self._config.paths.inbox / rel):
                    pass
            except (FileNotFoundError, NotADirectoryError):
                availability.forget(rel)  # removed: nothing to wait for
            except OSError as exc:
                availability.failed(rel, exc)
            else:
                if availability.answered(rel):
                    self._resume(rel)
        self._poll_folders()

    def _saw_folder(self, rel: PurePosixPath) -> None:
        """Remember folders that must be polled (a share written by other machines)."""
        if self._config.watch.poll_for(rel) and not any(p in self._polled for p in rel.parents):
            self._polled.add(rel)

    def _poll_folders(self) -> None:
        """inotify sees nothing that other clients of an NFS/SMB mount write: list those folders
        every POLL_EVERY seconds instead."""
        inbox = self._config.paths.inbox
        for folder in sorted(self._polled):
            if self.availability.is_down(folder):
                continue  # retried with a backoff by _check_folders
            try:
                present = (inbox / folder).is_dir()
            except OSError as exc:
                self._folder_failed(folder, exc)
                continue
            if not self._config.watch.poll_for(folder) or not present:
                self._polled.discard(folder)  # gone, or no longer polled after a reload
                continue
            for rel in scan(inbox, folder, on_error=self._folder_failed):
                self.settler.notice(rel)
            if self.availability.inbox_down():
                return

    def _take_hints(self) -> None:
        inbox = self._config.paths.inbox
        paths, folders = self.hints.drain()
        for raw in paths | folders:
            rel = _relative(inbox, raw)
            if rel is None or is_ignored_path(rel):
                continue
            if raw in folders:
                self._scans.append((self._scan(rel), False))
            else:
                self.settler.notice(rel)

    def _advance_scans(self) -> None:
        budget = SCAN_SLICE
        while self._scans and budget > 0:
            try:
                rel = next(self._scans[0][0])
            except StopIteration:
                if self._scans.pop(0)[1]:
                    self._last_full_scan = time.time()
                continue
            self.settler.notice(rel)
            budget -= 1
        if self._scans:
            self.hints.wake.set()  # more to list: come straight back

    def _dispatch(self) -> None:
        now = time.time()
        if now >= self._journal_check_at:
            with self._lock:
                busy = set(self._in_flight)
            for row in self.journal.due(now, busy)[: max(self._free(), 0)]:
                self._submit(row)
            with self._lock:
                busy = set(self._in_flight)
            # `is None`, not `or`: 0.0 (due since always: taken over, resumed, made due by a
            # reload or a target coming back) is a time, and the most urgent one.
            next_due = self.journal.next_due_time(busy)
            self._journal_check_at = now + 3600 if next_due is None else next_due
        while self._ready and self._free() > 0 and not self.stopping.is_set():
            ready = self._ready.popleft()
            self._ready_paths.discard(ready.rel)
            if self.availability.is_down(ready.rel.parent):
                continue  # found again by the scan when its folder answers
            if self._ignores(ready):
                self.settler.hold(ready.rel)
                continue
            claimed = self.claimer.claim(ready)
            if claimed is None:
                self.settler.notice(ready.rel)
                continue
            if ready.empty_expired:
                claimed = self.journal.change(
                    claimed,
                    size=0,
                    sha256=EMPTY_SHA256,  # its content is known: no bytes
                    state="rejected",
                    error={
                        "kind": "empty",
                        "message": "the file stayed empty (0 bytes); the scanner or fax software "
                        "did not write it: scan the document again",
                    },
                )
            self._submit(claimed)

    def _ignores(self, ready: Ready) -> bool:
        """Whether a rule says to leave this file alone: judged before claiming, so an
        ignored file is never moved. Anything else (including errors) is the pipeline's."""
        config = self._config
        if ready.snapshot is None or not any(rule.action == "ignore" for rule in config.rules):
            return False
        try:
            fd, st = content.open_regular(config.paths.inbox / ready.rel)
        except (OSError, content.UnsafeFile):
            return False
        try:
            fmt = ready.format if ready.format is not None else content.detect_format(fd)
            _, verdict = evaluate(
                config, ready.rel, fmt, st.st_size,
                mtime=datetime.fromtimestamp(st.st_mtime, UTC),
                received=datetime.fromtimestamp(ready.received, UTC),
            )  # fmt: skip
        except Rejected:
            return False
        finally:
            os.close(fd)
        ignored = verdict.decision is not None and verdict.decision.action == "ignore"
        if ignored:
            event(log, logging.INFO, "file_ignored", file=self.masker.path(ready.rel))
        return ignored

    def _collect(self) -> None:
        while True:
            try:
                outcome = self._finished.get_nowait()
            except queue.Empty:
                return
            if outcome.result in ("deferred", "released", "gone"):
                self._journal_check_at = 0.0  # a new due time may have been set
            if outcome.result in ("done", "failed"):
                self._last_progress = time.monotonic()
            if outcome.result == "done":
                self.summary.done += 1
            elif outcome.result == "failed":
                self.summary.failed += 1
            elif outcome.result == "ignored":
                self.settler.hold(outcome.rel)
            elif outcome.result == "released":
                self.settler.notice(outcome.rel)

    def _sleep(self, next_scan: float) -> None:
        now = time.monotonic()
        deadline = next_scan if not self.once else now + 1.0
        due = self.settler.next_due()
        if due is not None:
            deadline = min(deadline, due)
        deadline = min(deadline, now + CONFIG_CHECK_EVERY, now + self._watchdog_every)
        if self._free() > 0:
            # With every worker busy, a finishing worker wakes the loop; due rows wait for it.
            deadline = min(deadline, self._journal_check_at - time.time() + now)
            if self._ready:
                deadline = now
        self.hints.wake.wait(max(0.0, deadline - now))
        self.hints.wake.clear()

    def _once_finished(self) -> bool:
        if self._scans or self._ready or self.settler.busy():
            return False
        with self._lock:
            if self._in_flight:
                return False
        # A short wait (a retry backoff, a probe, an unknown outcome settling) is seen through;
        # a longer one (an outage) leaves the file waiting for the next run.
        next_due = self.journal.next_due_time(set())
        if next_due is None or next_due > time.time() + ONCE_PATIENCE_SECONDS:
            return True
        return time.monotonic() - self._last_progress > ONCE_PATIENCE_SECONDS

    def snapshot(self) -> Snapshot:
        """The daemon's state for /metrics, /healthz and `ingestd status` (any thread)."""
        now = time.time()
        files: dict[str, int] = dict.fromkeys(("waiting", *ACTIVE_STATES, *FINAL_STATES), 0)
        files.update(self.journal.counts())
        files["waiting"] = len(self.settler) + len(self._ready)
        oldest = [t for t in (self.settler.oldest_wall(), self.journal.oldest_active()) if t]
        scan_age = None if self._last_full_scan is None else now - self._last_full_scan
        limit = 2 * self._config.watch.scan_interval_seconds + 30
        problem = ""
        down = len(self.availability)
        if self.availability.inbox_down():
            problem = "the inbox is not answering (a share that is down or not mounted?)"
        elif down:
            problem = f"{down} inbox folder(s) not answering"
        elif not self.once and not self.observation.alive():
            problem = "the inbox observer is not running"
        elif (scan_age if scan_age is not None else now - self._started) > limit:
            problem = "no full inbox scan finished recently"
        targets = {
            name: {
                "up": health.up,
                "misconfigured": health.misconfigured,
                "paused_until": health.paused_until or None,
                "reason": health.reason or None,
            }
            for name, health in self._health.items()
            if name in self._targets
        }
        return Snapshot(
            files=files,
            oldest_waiting_seconds=now - min(oldest) if oldest else 0.0,
            last_scan_age_seconds=scan_age,
            targets=targets,
            healthy=not problem,
            problem=problem,
            inbox_up=not self.availability.inbox_down(),
            folders_down=down,
        )

    def _publish_status(self) -> None:
        """status.json in the state folder, for `ingestd status` (another process)."""
        snap = self.snapshot()
        publish(
            self._config.paths.state.parent,
            {
                "pid": os.getpid(),
                "instance": self.claimer.instance,
                "started_at": self._started,
                "updated_at": time.time(),
                "healthy": snap.healthy,
                "problem": snap.problem or None,
                "waiting": snap.files["waiting"],
                "in_progress": len(self._in_flight),
                "last_scan_age_seconds": snap.last_scan_age_seconds,
                "targets": snap.targets,
            },
        )

    def _status_line(self) -> str:
        counts = self.journal.counts()
        waiting = len(self.settler) + len(self._ready)
        return (
            f"STATUS=waiting {waiting}, in progress {len(self._in_flight)}, "
            f"done {counts.get('done', 0)}, failed {counts.get('failed', 0)}"
        )

    def _config_changed(self) -> bool:
        """Whether the config file changed since it was last loaded (looked at every 2 s)."""
        now = time.monotonic()
        if now < self._config_checked_at + CONFIG_CHECK_EVERY:
            return False
        self._config_checked_at = now
        stamp = _stamp(self._config.file)
        if stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        return True

    def _reload(self) -> None:
        self._reload_requested = False
        self._config_stamp = _stamp(self._config.file)
        notify.notify("RELOADING=1", notify.monotonic_usec())
        try:
            config = load_config(self._config.file)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("event=reload_refused problem=%s", _one_line(str(problem)))
            event(
                log,
                logging.ERROR,
                "reload_refused",
                problems=len(exc.problems),
                action="the previous config keeps running; fix the file and reload again",
            )
        else:
            if config.paths != self._config.paths:
                event(
                    log,
                    logging.WARNING,
                    "reload_paths_ignored",
                    action="changing paths needs a restart",
                )
                config = _with_paths(config, self._config)
            with self.pipeline.reloading:
                self._build_targets(config)
                self._config = config
                # Waiting files get another chance at once under the new config.
                self.journal.make_due()
            self.settler.empty_fail_seconds = config.watch.empty_fail_seconds
            self.settler.unknown_type_grace_seconds = config.watch.unknown_type_grace_seconds
            self._journal_check_at = 0.0
            event(
                log, logging.INFO, "reloaded", targets=len(config.targets), rules=len(config.rules)
            )
        notify.notify("READY=1", self._status_line())

    def _shutdown(self) -> Summary:
        notify.notify("STOPPING=1")
        with self._lock:
            in_flight = len(self._in_flight)
        if in_flight and not self.once:
            event(
                log,
                logging.INFO,
                "stopping",
                in_progress=in_flight,
                grace_seconds=SHUTDOWN_GRACE_SECONDS,
                action="a second signal stops at once",
            )
        self.observation.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    break
            self.hints.wake.wait(0.2)
            self._collect()
        self._collect()
        for _ in self._workers:
            self._work.put(None)
        # Files parked at shutdown are journal rows in an active state: counted there, once.
        counts = self.journal.counts()
        self.summary.waiting = sum(counts.get(state, 0) for state in ACTIVE_STATES)
        event(
            log,
            logging.INFO,
            "stopped",
            done=self.summary.done,
            failed=self.summary.failed,
            waiting=self.summary.waiting,
        )
        for target in self._targets.values():
            target.close()
        return self.summary


def _make_unless_unavailable(folder: Path) -> None:
    """Make a folder; one on a share that does not answer yet is paused, not fatal."""
    try:
        make_folders(folder)
    except OSError as exc:
        if not is_unavailable(exc):
            raise


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


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


def _one_line(text: str) -> str:
    return text.replace("\n", " ")


def _with_paths(config: Config, old: Config) -> Config:
    import dataclasses

    return dataclasses.replace(config, paths=old.paths)
