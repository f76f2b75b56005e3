"""Latency: from a writer closing a file to the EHR storing it, one file at a time, minus the
settle time ingestd is told to wait, against a client that uploads at once (the floor).

Usage (from the repository root):

    .venv/bin/python bench/latency.py [--files 60] [--interval 1.0] [--settle 0.2,1.0]
        [--size 100000] [--latency-ms 50] [--baseline-files 20] [--rename] [--deadline 120]

The sandbox EHR runs in this process and records `time.time()` the moment it stores each
document (a wrapper around its store, bench/common.py; its own `created_at` has whole seconds).
It stores a document before it sleeps `--latency-ms` and answers, so that latency is not in the
figure and nothing has to be subtracted for it.

For each settle time, `ingestd run` (settle_seconds as given) starts on an inbox of empty
patient folders and, once idle, a writer in this process writes one file every `--interval`
seconds straight into a patient folder (open, write, close; `--rename` writes a hidden name and
renames it instead). Latency of a file = stored time − the writer's close (or rename) time −
settle_seconds: what ingestd adds beyond the quiet time it must wait by design.

Baseline in the same run: a keep-alive client process (bench/clients.py `follow`) told each
path the moment its file is closed, which uploads it at once: stored − close is the cost of
reading, encoding and sending one file, the floor for any uploader. Figures: p50, p90, p99
(nearest rank: with 60 files, p99 is the largest) and max, in ms. Goals: ingestd p50 ≤ 20 ms,
p99 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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
    percentile,
    wait_quiet,
)

from ingestd.sandbox.samples import pdf

GOAL_P50_MS = 20.0
GOAL_P99_MS = 100.0
PATIENTS = 10


def write(path: Path, data: bytes, rename: bool) -> float:
    """Write one file like a scanner; the wall-clock time the finished file was in place."""
    if rename:
        tmp = path.with_name("." + path.name + ".part")
        with tmp.open("wb") as f:
            f.write(data)
        os.rename(tmp, path)
    else:
        with path.open("wb") as f:
            f.write(data)
    return time.time()


def paced(n: int, interval: float) -> list[float]:
    """Start times, one every `interval` seconds from now."""
    start = time.monotonic() + 0.1
    return [start + i * interval for i in range(n)]


def until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # pacing the writer, not waiting for a condition


def run_ingestd(
    sb: StampedSandbox, root: Path, args: argparse.Namespace, settle: float
) -> list[float]:
    sb.reset()
    clinic = Clinic(root / f"settle-{settle:g}")
    for p in range(PATIENTS):
        (clinic.inbox / f"pat_{p:04d}").mkdir()
    config = clinic.config(sb, concurrency=4, watch={"settle_seconds": settle})
    daemon = Daemon(config, clinic.root / "daemon.log")
    closed: dict[str, float] = {}
    try:
        daemon.wait_started()
        wait_quiet(daemon.pid)
        for i, moment in enumerate(paced(args.files, args.interval)):
            data = pdf(f"latency-{settle}-{i}", args.size)
            until(moment)
            path = clinic.inbox / f"pat_{i % PATIENTS:04d}" / f"scan-{i:04d}.pdf"
            closed[hashlib.sha256(data).hexdigest()] = write(path, data, args.rename)
        stamps = sb.wait_count(args.files, args.deadline, "ingestd: every file stored")
    finally:
        code = daemon.stop()
    if code != 0:
        raise RuntimeError(f"ingestd exited with {code}")
    if len(stamps) != args.files or {sha for _, sha in stamps} != set(closed):
        raise RuntimeError("ingestd: the stored documents are not the files written")
    if not args.keep:
        clinic.remove()
    return [(t - closed[sha] - settle) * 1000 for t, sha in stamps]


def run_direct(sb: StampedSandbox, root: Path, args: argparse.Namespace) -> list[float]:
    sb.reset()
    folder = root / "direct"
    folder.mkdir()
    client = Client(["follow", "--base-url", sb.leyr_base_url], root / "client-follow.log")
    client.wait_ready()
    closed: dict[str, float] = {}
    for i, moment in enumerate(paced(args.baseline_files, args.interval)):
        data = pdf(f"direct-{i}", args.size)
        until(moment)
        path = folder / f"scan-{i:04d}.pdf"
        closed[hashlib.sha256(data).hexdigest()] = write(path, data, args.rename)
        client.send(f"pat_{i % PATIENTS:04d}\t{path}")
    stamps = sb.wait_count(args.baseline_files, args.deadline, "direct client: every file")
    summary = client.finish(args.deadline)
    if summary != "errors 0" or {sha for _, sha in stamps} != set(closed):
        raise RuntimeError(f"direct client: {summary}")
    return [(t - closed[sha]) * 1000 for t, sha in stamps]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between files")
    parser.add_argument("--settle", default="0.2,1.0", help="settle_seconds values to try")
    parser.add_argument("--size", type=int, default=100_000, help="bytes per file")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--baseline-files", type=int, default=20)
    parser.add_argument("--rename", action="store_true", help="write hidden, then rename")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    settles = [float(s) for s in args.settle.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-latency-"))
    began = time.monotonic()
    background = Background()
    sb = StampedSandbox(latency_seconds=args.latency_ms / 1000).start()
    results: list[tuple[str, float | None, list[float]]] = []
    try:
        log(f"direct client: {args.baseline_files} files, one every {args.interval:g} s")
        results.append(("direct keep-alive client (floor)", None, run_direct(sb, root, args)))
        for settle in settles:
            log(f"ingestd settle_seconds {settle:g}: {args.files} files")
            results.append(("ingestd run", settle, run_ingestd(sb, root, args, settle)))
    finally:
        sb.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(args, results, time.monotonic() - began)
    print(background.report())
    return 0


def report(
    args: argparse.Namespace, results: list[tuple[str, float | None, list[float]]], wall: float
) -> None:
    how = "hidden name + rename" if args.rename else "open, write, close in place"
    print(f"Latency ({now_utc()}; {machine()})")
    print(
        f"one {args.size:,}-byte PDF every {args.interval:g} s ({how}); sandbox latency "
        f"{args.latency_ms:g} ms per upload (after storing, so not in the figures)"
    )
    print("ingestd: stored − close − settle_seconds; direct client: stored − close. In ms.")
    print()
    print("| method | settle_seconds | files | p50 | p90 | p99 | max | min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    floor_p50 = percentile(results[0][2], 50)
    verdicts = []
    for label, settle, values in results:
        p50, p90, p99 = (percentile(values, q) for q in (50, 90, 99))
        cells = [f"{v:.1f}" for v in (p50, p90, p99, max(values), min(values))]
        settle_text = "-" if settle is None else f"{settle:g}"
        print(f"| {label} | {settle_text} | {len(values)} | " + " | ".join(cells) + " |")
        if settle is None:
            continue
        ok50, ok99 = p50 <= GOAL_P50_MS, p99 <= GOAL_P99_MS
        verdicts.append(
            f"settle {settle:g}: p50 {p50:.1f} ms ({'meets' if ok50 else 'MISSES'} ≤ "
            f"{GOAL_P50_MS:g}), p99 {p99:.1f} ms ({'meets' if ok99 else 'MISSES'} ≤ "
            f"{GOAL_P99_MS:g}); p50 is {p50 - floor_p50:+.1f} ms over the direct client's "
            f"{floor_p50:.1f} ms ({p50 / floor_p50:.1f} ×)"
        )
    print()
    for line in verdicts:
        print(line)
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
