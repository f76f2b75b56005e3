"""Backlog: `ingestd run` started on an inbox already holding many small files in many patient
folders: how soon the first upload is stored, and how fast the backlog drains against a raw
keep-alive client at equal concurrency, measured in the same run.

Usage (from the repository root):

    .venv/bin/python bench/backlog.py [--files 20000] [--folders 2000] [--size 2000]
        [--measure 2000] [--max-drain-seconds 100] [--concurrency 4] [--latency-ms 50]
        [--settle 1.0] [--deadline 900]

`--files` PDFs of `--size` bytes are written into `--folders` patient folders before anything
starts. The sandbox EHR runs in this process (`--latency-ms` per upload) and records the time it
stores each document.

- Raw client (first): bench/clients.py `raw`, N threads on one keep-alive session, uploads the
  first `--measure` files of the backlog.
- ingestd: `ingestd run` (target concurrency N, settle_seconds `--settle`, ingestd's default 1.0)
  is started on the full backlog. Start-up: from just before the process is spawned to the first
  document stored (goal ≤ 2 s), with the moment `event=started` appeared in its log between.
  Drain: it runs until `--measure` documents are stored (`--measure 0`: the whole backlog, and
  then until every receipt) or for at most `--max-drain-seconds` after its first upload (so a
  slow daemon cannot stretch the run; the rate is then over what it stored), then gets SIGTERM.

Drain rate of both: (documents − 1) ÷ (last stored − first stored), so start-up is not in it.
Goal: ingestd ≥ 0.9 × raw client. The default times 2,000 uploads of the 20,000-file backlog
so that a run stays near 3 minutes; `--measure 0 --max-drain-seconds 3600` drains them all
(at best about 2 × files ÷ (N ÷ latency) seconds for the two).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (
    Background,
    Client,
    Clinic,
    Daemon,
    StampedSandbox,
    log,
    machine,
    now_utc,
    wait_for,
)

from ingestd.sandbox.samples import pdf

GOAL_START_SECONDS = 2.0
GOAL_RAW = 0.9


def fill(clinic: Clinic, args: argparse.Namespace) -> list[str]:
    """Write the backlog; returns `PATIENT<TAB>PATH` lines in writing order."""
    lines = []
    for f in range(args.folders):
        (clinic.inbox / f"pat_{f:05d}").mkdir()
    for i in range(args.files):
        patient = f"pat_{i % args.folders:05d}"
        path = clinic.inbox / patient / f"doc-{i:06d}.pdf"
        path.write_bytes(pdf(f"backlog-{i}", args.size))
        lines.append(f"{patient}\t{path}")
    return lines


def drain_rate(stamps: list[float]) -> float:
    ordered = sorted(stamps)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def run_raw(
    sb: StampedSandbox, root: Path, lines: list[str], n: int, conc: int, deadline: float
) -> tuple[float, float]:
    sb.reset()
    listing = root / "raw-list.txt"
    listing.write_text("\n".join(lines[:n]) + "\n")
    client = Client(
        ["raw", "--base-url", sb.leyr_base_url, "--list", str(listing), "--concurrency", str(conc)],
        root / "client-raw.log",
    )
    client.wait_ready()
    began = client.go()
    stamps = [t for t, _ in sb.wait_count(n, deadline, "raw client: every file stored")]
    summary = client.finish(deadline)
    if not summary.startswith(f"ok {n} errors 0"):
        raise RuntimeError(f"raw client: {summary}")
    return min(stamps) - began, drain_rate(stamps)


def run_ingestd(
    sb: StampedSandbox, clinic: Clinic, args: argparse.Namespace, n: int
) -> tuple[float, float, float, float, int]:
    sb.reset()
    config = clinic.config(sb, concurrency=args.concurrency, watch={"settle_seconds": args.settle})
    daemon = Daemon(config, clinic.root / "daemon.log")
    spawned = daemon.started_at
    try:
        started = daemon.wait_started(timeout=args.deadline)
        first = min(t for t, _ in sb.wait_count(1, args.deadline, "ingestd: first upload"))
        cap = max(0.0, first + args.max_drain_seconds - time.time())
        try:
            sb.wait_count(n, cap, "ingestd: drain", interval=0.1)
        except TimeoutError:
            log(f"ingestd: drain stopped after {args.max_drain_seconds:g} s (--max-drain-seconds)")
        if n == args.files and sb.count() >= n:
            wait_for(
                lambda: daemon.log_text().count("event=file_done") >= n,
                args.deadline,
                "ingestd: every receipt",
                interval=0.2,
            )
    finally:
        code = daemon.stop()
    if code != 0:
        raise RuntimeError(f"ingestd exited with {code}")
    stamps = [t for t, _ in sb.stamps()]  # those finished during the shutdown grace too
    timed = sorted(stamps)[:n]
    return started - spawned, first - spawned, drain_rate(timed), len(timed), len(stamps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=2_000, help="bytes per file")
    parser.add_argument("--measure", type=int, default=2_000, help="uploads timed; 0 = all")
    parser.add_argument("--max-drain-seconds", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=1.0, help="ingestd settle_seconds")
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    n = min(args.measure or args.files, args.files)
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-backlog-"))
    began = time.monotonic()
    background = Background()
    sb = StampedSandbox(latency_seconds=args.latency_ms / 1000).start()
    try:
        clinic = Clinic(root / "clinic")
        log(f"writing {args.files} files into {args.folders} folders")
        lines = fill(clinic, args)
        log(f"raw client: {n} uploads at concurrency {args.concurrency}")
        raw_first, raw_rate = run_raw(sb, root, lines, n, args.concurrency, args.deadline)
        log(f"ingestd: {n} uploads at concurrency {args.concurrency}")
        started, first, rate, timed, stored = run_ingestd(sb, clinic, args, n)
    finally:
        sb.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"Backlog ({now_utc()}; {machine()})")
    print(
        f"{args.files:,} files of {args.size:,} bytes in {args.folders:,} patient folders before "
        f"start; sandbox latency {args.latency_ms:g} ms per upload; concurrency "
        f"{args.concurrency}; ingestd settle_seconds {args.settle:g}; {n:,} uploads timed"
    )
    print()
    print("| method | to `event=started` s | to first stored s | uploads timed | drain files/s "
          "| ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| raw keep-alive client | - | {raw_first:.3f} (from go) | {n:,} | {raw_rate:.1f} | 1.00 |"
    )
    print(
        f"| ingestd run | {started:.3f} | {first:.3f} (from spawn) | {timed:,} | {rate:.1f} | "
        f"{rate / raw_rate:.2f} |"
    )
    print()
    print(
        f"start-up: first upload stored {first:.2f} s after the process was spawned: "
        f"{'meets' if first <= GOAL_START_SECONDS else 'MISSES'} the goal of "
        f"≤ {GOAL_START_SECONDS:g} s"
    )
    print(
        f"drain: ingestd ÷ raw client = {rate / raw_rate:.2f}: "
        f"{'meets' if rate / raw_rate >= GOAL_RAW else 'MISSES'} the goal of ≥ {GOAL_RAW}"
    )
    if timed < n:
        print(
            f"ingestd stored only {timed:,} of {n:,} within --max-drain-seconds "
            f"{args.max_drain_seconds:g}; at {rate:.1f} files/s the whole backlog would take "
            f"{args.files / rate / 60:.1f} min (the raw client: "
            f"{args.files / raw_rate / 60:.1f} min)"
        )
    print(f"documents stored by ingestd before it stopped: {stored:,}")
    print(f"wall time {time.monotonic() - began:.0f} s")
    print(background.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
