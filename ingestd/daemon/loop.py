"""The daemon: the main loop that turns hints and scans into claimed files for the workers.

One thread (the caller's) runs the loop: intake (hints, scans, polling, claims), dispatching due
journal rows to the worker pool, leases and takeover from dead instances, reload, and the
status it reports (sd_notify, status.json, /metrics). `run` is `ingestd run`; `once=True` is
`ingestd once` (process what is in the inbox now, then return).

Signals: SIGTERM/SIGINT stop claiming, let in-flight uploads finish within the grace period and
leave the rest parked in the journal; a second one exits at once (the journal is crash-safe).
SIGHUP reloads the config: an invalid one is logged and the old one keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ingestd.config.model import Config
from ingestd.daemon.intake import Intake
from ingestd.daemon.reload import CONFIG_CHECK_EVERY, ConfigWatch, load_new
from ingestd.daemon.report import publish_status, snapshot, status_line
from ingestd.daemon.signals import Signals
from ingestd.daemon.statuspage import StatusPage, start_status_page
from ingestd.daemon.verify import PeriodicVerify
from ingestd.daemon.workers import WorkerPool
from ingestd.delivery.fleet import Fleet
from ingestd.delivery.pipeline import Pipeline
from ingestd.filing.places import make_folders
from ingestd.inbox.claims import Claimer, instance_id
from ingestd.journal import ACTIVE_STATES, JournalUnavailable, Row, open_journal
from ingestd.observe import notify
from ingestd.observe.logs import event, load_masker
from ingestd.observe.metrics import DaemonState, Metrics, MetricsServer, start_server
from ingestd.unreachable import is_unavailable

log = logging.getLogger("ingestd.daemon")

SHUTDOWN_GRACE_SECONDS = 30.0
LEASE_TOUCH_EVERY = 10.0  # well inside any sensible claim lease
POLL_EVERY = 2.0  # folders on network shares, listed this often
ONCE_PATIENCE_SECONDS = 30.0


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
        instance = instance_id(state_dir)
        self.journal = open_journal(paths.state, config.journal, instance)
        self.masker = load_masker(state_dir)
        self.claimer = Claimer(paths.inbox, self.journal, instance, self.masker)
        try:
            self.claimer.prepare()
        except OSError as exc:
            if not is_unavailable(exc):
                raise
            # A share that is down at start-up: the loop pauses the inbox until it answers.
        self.fleet = Fleet(on_up=self._target_up)
        self.fleet.build(config.targets)
        self.stopping = threading.Event()
        self._config_watch = ConfigWatch(config.file)
        self.metrics = Metrics()
        self.metrics.watch(self.snapshot)
        self._metrics_server: MetricsServer | None = None
        self._status_page: StatusPage | None = None
        self.intake = Intake(
            lambda: self._config, self.claimer, self.journal, self.masker, once, instance
        )
        self.signals = Signals(self.stopping, self.intake.hints.wake)
        self.pipeline = Pipeline(
            config=lambda: self._config,
            journal=self.journal,
            claimer=self.claimer,
            fleet=self.fleet,
            masker=self.masker,
            stopping=self.stopping,
            metrics=self.metrics,
        )
        self.workers = WorkerPool(
            self.capacity,
            lambda: self.capacity,
            self.pipeline.process,
            self.journal,
            self.masker,
            self.intake.hints.wake,
        )
        self.verify = PeriodicVerify(
            lambda: self._config, self.journal, self.masker, self.metrics, self.stopping
        )
        self._watchdog_every = notify.watchdog_interval()
        self._resumed: set[int] = set()
        self.started = time.time()
        self._last_progress = time.monotonic()  # `once` gives up on waits only after none
        self._journal_check_at = 0.0
        self.summary = Summary()

    @property
    def config(self) -> Config:
        return self._config

    @property
    def capacity(self) -> int:
        # Twice the upload slots (TargetHealth.slots caps the sends): while some files are sent,
        # others are read, decided and filed (fsyncs): an upload slot never waits for local work.
        return 2 * sum(t.common.concurrency for t in self._config.targets.values()) + 2

    def _target_up(self, name: str) -> None:
        """A target answers again (worker thread): its waiting files may go at once."""
        self.journal.make_due()
        self._journal_check_at = 0.0
        self.intake.hints.wake.set()

    # --- signals ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.signals.request_stop()

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> Summary:
        recovered = self.claimer.recover()
        self.pipeline.filer.hold_recorded(recovered)
        for row in recovered:
            self._resumed.add(row.id)
        known = {row.work for row in self.journal.active()}
        try:
            orphans = self.claimer.orphans(known)
        except OSError:
            orphans = []  # the inbox does not answer: looked for at the next start
        for orphan in orphans:
            self.claimer.return_orphan(orphan)
        self.workers.start()
        if not self.once:
            self.intake.start_watching()
            if self._config.metrics_listen is not None:
                self._metrics_server = start_server(
                    self._config.metrics_listen, self.metrics, self.snapshot
                )
            self.verify.start()
            self._status_page = start_status_page(self)
        self.intake.scan_all()
        next_scan = time.monotonic() + self._config.watch.scan_interval_seconds
        last_watchdog = 0.0
        next_poll = time.monotonic() + POLL_EVERY
        next_lease = 0.0
        publish_status(self)
        notify.notify("READY=1", "STATUS=scanning the inbox")
        event(
            log,
            logging.INFO,
            "started",
            mode="once" if self.once else "run",
            targets=len(self.fleet),
            rules=len(self._config.rules),
        )
        while not self.stopping.is_set():
            if self.signals.reload_requested or self._config_watch.changed():
                self._reload()
            self.intake.take_hints()
            self.intake.advance_scans()
            self.intake.look()
            self._dispatch()
            self._collect()
            now = time.monotonic()
            if not self.once:
                if now >= next_scan:
                    self.intake.periodic_scan()
                    next_scan = now + self._config.watch.scan_interval_seconds
                if now - last_watchdog >= self._watchdog_every:
                    notify.notify("WATCHDOG=1", status_line(self))
                    publish_status(self)
                    last_watchdog = now
                if now >= next_poll:
                    self.intake.check_folders()
                    next_poll = now + POLL_EVERY
                if now >= next_lease:
                    self._keep_lease()
                    next_lease = now + self._lease_every()
            elif self._once_finished():
                break
            self._sleep(next_scan)
        return self._shutdown()

    def _lease_every(self) -> float:
        """A shared journal's heartbeat comes well inside the lease, however short it is."""
        lease = self._config.watch.claim_lease_seconds
        return min(LEASE_TOUCH_EVERY, lease / 3) if self.journal.shared else LEASE_TOUCH_EVERY

    def _keep_lease(self) -> None:
        """Renew this instance's lease and take over claims of instances gone past theirs."""
        if self.journal.shared:
            # The fleet's journal knows who is alive, by the database's clock: no lease files.
            lease = self._config.watch.claim_lease_seconds
            self.journal.heartbeat()
            self.intake.owners.members = self.journal.live_instances(lease)
            if not self.intake.rescan_if_restarted():
                return
            taken = self.journal.take_over(lease)
            if taken:
                event(log, logging.WARNING, "claims_taken_over", files=len(taken))
            recovered = self.claimer.recover(taken)
            self.pipeline.filer.hold_recorded(recovered)
            for row in recovered:
                self._resumed.add(row.id)
            self._journal_check_at = 0.0
            return
        if not self.intake.rescan_if_restarted():
            return
        for other in self.claimer.stale_instances(self._config.watch.claim_lease_seconds):
            for row in self.claimer.take_over(other):
                self._resumed.add(row.id)
        self._journal_check_at = 0.0

    def _dispatch(self) -> None:
        now = time.time()
        if now >= self._journal_check_at:
            for row in self.journal.due(now, self.workers.busy())[: max(self.workers.free(), 0)]:
                self._submit(row)
            # `is None`, not `or`: 0.0 (due since always: taken over, resumed, made due by a
            # reload or a target coming back) is a time, and the most urgent one.
            next_due = self.journal.next_due_time(self.workers.busy())
            self._journal_check_at = now + 3600 if next_due is None else next_due
        for claimed in self.intake.claim(self.workers.free, self.stopping.is_set):
            self._submit(claimed)

    def _submit(self, row: Row) -> None:
        resumed = row.id in self._resumed
        self._resumed.discard(row.id)
        self.workers.submit(row, resumed)

    def _collect(self) -> None:
        for outcome in self.workers.outcomes():
            if outcome.result in ("deferred", "released", "gone"):
                self._journal_check_at = 0.0  # a new due time may have been set
            if outcome.result in ("done", "failed"):
                self._last_progress = time.monotonic()
            if outcome.result == "done":
                self.summary.done += 1
            elif outcome.result == "failed":
                self.summary.failed += 1
            elif outcome.result == "ignored":
                self.intake.hold(outcome.rel)
            elif outcome.result == "released":
                self.intake.notice(outcome.rel)

    def _sleep(self, next_scan: float) -> None:
        now = time.monotonic()
        deadline = next_scan if not self.once else now + 1.0
        due = self.intake.settler.next_due()
        if due is not None:
            deadline = min(deadline, due)
        deadline = min(deadline, now + CONFIG_CHECK_EVERY, now + self._watchdog_every)
        if self.workers.free() > 0:
            # With every worker busy, a finishing worker wakes the loop; due rows wait for it.
            deadline = min(deadline, self._journal_check_at - time.time() + now)
            if self.intake.has_ready():
                deadline = now
        wake = self.intake.hints.wake
        wake.wait(max(0.0, deadline - now))
        wake.clear()

    def _once_finished(self) -> bool:
        if self.intake.busy() or len(self.workers):
            return False
        # A short wait (a retry backoff, a probe, an unknown outcome settling) is seen through;
        # a longer one (an outage) leaves the file waiting for the next run.
        next_due = self.journal.next_due_time(set())
        if next_due is None or next_due > time.time() + ONCE_PATIENCE_SECONDS:
            return True
        return time.monotonic() - self._last_progress > ONCE_PATIENCE_SECONDS

    # --- what it reports -------------------------------------------------------------------

    def snapshot(self) -> DaemonState:
        """The daemon's state for /metrics, /healthz and `ingestd status` (any thread)."""
        return snapshot(self)

    # --- reload and shutdown ---------------------------------------------------------------

    def _reload(self) -> None:
        self.signals.reload_requested = False
        self._config_watch.loading()
        notify.notify("RELOADING=1", notify.monotonic_usec())
        config = load_new(self._config)
        if config is not None:
            with self.fleet.reloading:
                self.fleet.build(config.targets)
                self._config = config
                # Waiting files get another chance at once under the new config.
                self.journal.make_due()
            self.intake.reconfigure(config)
            self._journal_check_at = 0.0
            event(
                log, logging.INFO, "reloaded", targets=len(config.targets), rules=len(config.rules)
            )
        notify.notify("READY=1", status_line(self))

    def _shutdown(self) -> Summary:
        notify.notify("STOPPING=1")
        self.intake.folders.observation.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._status_page is not None:
            self._status_page.stop()
        self.workers.finish(SHUTDOWN_GRACE_SECONDS, self._collect, say=not self.once)
        # Files parked at shutdown are this instance's active rows (in a fleet, not the
        # others'), counted once; in an outage of the shared journal, the fleet's last counts.
        try:
            self.summary.waiting = len(self.journal.held(wait=False))
        except JournalUnavailable:
            counts = self.journal.counts()
            self.summary.waiting = sum(counts.get(state, 0) for state in ACTIVE_STATES)
        self.journal.leave()
        event(
            log,
            logging.INFO,
            "stopped",
            done=self.summary.done,
            failed=self.summary.failed,
            waiting=self.summary.waiting,
        )
        self.fleet.close()
        return self.summary


def _make_unless_unavailable(folder: Path) -> None:
    """Make a folder; one on a share that does not answer yet is paused, not fatal."""
    try:
        make_folders(folder)
    except OSError as exc:
        if not is_unavailable(exc):
            raise
