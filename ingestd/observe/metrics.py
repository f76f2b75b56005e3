"""Metrics and health over HTTP on a loopback address: `/metrics` (Prometheus) and `/healthz`.

Counters are fed by the pipeline as uploads finish; gauges (files by state, oldest waiting
file, last scan age, targets up) are read from the daemon when scraped. Labels are target names
and outcomes only: never a patient, a file or a document.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from ingestd.observe.logs import event

log = logging.getLogger("ingestd.metrics")

UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class DaemonState:
    """The daemon's state at scrape time."""

    files: Mapping[str, int]  # by state: waiting, claimed, uploading, …, done, failed
    oldest_waiting_seconds: float
    last_scan_age_seconds: float | None
    targets: Mapping[str, Mapping[str, Any]]  # name → {"up": bool, "misconfigured": bool}
    healthy: bool
    problem: str = ""
    inbox_up: bool = True  # the inbox folder answers (a share: mounted and reachable)
    folders_down: int = 0  # inbox folders paused because they do not answer (the inbox too)


@dataclass
class Metrics:
    """What the pipeline records as it works."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        self.uploads = Counter(
            "ingestd_uploads", "Finished deliveries by target and outcome",
            ["target", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.upload_seconds = Histogram(
            "ingestd_upload_seconds", "Time from first send to the EHR's answer",
            ["target"], buckets=UPLOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.bytes_sent = Counter(
            "ingestd_upload_bytes", "Document bytes stored by the EHR", ["target"],
            registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            "ingestd_upload_retries", "Transient errors retried", ["target"],
            registry=self.registry,
        )  # fmt: skip
        self.conversions = Counter(
            "ingestd_conversions", "Files converted to PDF before sending, by outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.conversion_seconds = Histogram(
            "ingestd_conversion_seconds", "Time to convert one file to PDF",
            buckets=UPLOAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.converted_pages = Counter(
            "ingestd_converted_pages", "Pages of the PDFs made", registry=self.registry
        )

        self.verifications = Counter(
            "ingestd_verify", "Receipts checked against the EHR (ingestd verify) by outcome",
            ["target", "outcome"], registry=self.registry,
        )  # fmt: skip

    def finished(self, target: str, outcome: str, seconds: float, size: int = 0) -> None:
        self.uploads.labels(target, outcome).inc()
        if outcome == "done":
            self.upload_seconds.labels(target).observe(seconds)
            self.bytes_sent.labels(target).inc(size)

    def retried(self, target: str) -> None:
        self.retries.labels(target).inc()

    def converted(self, outcome: str, seconds: float, pages: int = 0) -> None:
        """One conversion to PDF finished: done | failed."""
        self.conversions.labels(outcome).inc()
        if outcome == "done":
            self.conversion_seconds.observe(seconds)
            self.converted_pages.inc(pages)

    def verified(self, target: str, outcome: str) -> None:
        self.verifications.labels(target, outcome).inc()

    def watch(self, snapshot: Callable[[], DaemonState]) -> None:
        """Read the daemon's gauges from `snapshot` at every scrape."""
        self.registry.register(_StateCollector(snapshot))  # type: ignore[arg-type, unused-ignore]


class _StateCollector:
    """Gauges read at scrape time (any object with `collect` is a collector)."""

    def __init__(self, snapshot: Callable[[], DaemonState]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # names are not known up front (one series per target); nothing to clash

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._snapshot()
        files = GaugeMetricFamily("ingestd_files", "Files by state", labels=["state"])
        for state, count in sorted(now.files.items()):
            files.add_metric([state], count)
        yield files
        yield GaugeMetricFamily(
            "ingestd_oldest_waiting_seconds", "Age of the oldest file not yet finished",
            value=now.oldest_waiting_seconds,
        )  # fmt: skip
        if now.last_scan_age_seconds is not None:
            yield GaugeMetricFamily(
                "ingestd_last_scan_age_seconds", "Seconds since the last full inbox scan ended",
                value=now.last_scan_age_seconds,
            )  # fmt: skip
        yield GaugeMetricFamily(
            "ingestd_inbox_up", "1 when the inbox folder answers (a share: mounted, reachable)",
            value=1.0 if now.inbox_up else 0.0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "ingestd_folders_unavailable", "Inbox folders paused because they do not answer",
            value=now.folders_down,
        )  # fmt: skip
        up = GaugeMetricFamily("ingestd_target_up", "1 when taking uploads", labels=["target"])
        paused = GaugeMetricFamily(
            "ingestd_target_misconfigured", "1 when paused for refused credentials",
            labels=["target"],
        )  # fmt: skip
        for name, health in sorted(now.targets.items()):
            up.add_metric([name], 1.0 if health["up"] else 0.0)
            paused.add_metric([name], 1.0 if health["misconfigured"] else 0.0)
        yield up
        yield paused


class MetricsServer:
    """A small HTTP server on a loopback address, in a daemon thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], DaemonState]):
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ingestd-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: Metrics, health: Callable[[], DaemonState]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                now = health()
                text = "ok\n" if now.healthy else f"unhealthy: {now.problem}\n"
                self._answer(200 if now.healthy else 503, text.encode(), "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not events

    return Handler


def start_server(
    listen: tuple[str, int], metrics: Metrics, health: Callable[[], DaemonState]
) -> MetricsServer | None:
    """Serve metrics; a port already taken (a second instance) is logged, not fatal."""
    try:
        server = MetricsServer(listen[0], listen[1], metrics, health).start()
    except OSError as exc:
        event(log, logging.ERROR, "metrics_unavailable", port=listen[1], reason=exc.strerror)
        return None
    event(log, logging.INFO, "metrics_listening", address=f"{listen[0]}:{server.port}")
    return server
