"""Idle cost: CPU and memory of `ingestd run` watching many empty patient folders and nothing
happening, against the same daemon watching a few folders, measured in the same run.

Usage (from the repository root):

    .venv/bin/python bench/idle.py [--folders 10000] [--baseline-folders 10] [--window 30]
        [--startup-timeout 60]

For each folder count, a fresh inbox gets that many empty patient folders and `ingestd run`
starts with ingestd's default watch settings (settle 1.0 s, full scan every 60 s). Once it has
logged `event=started` and then used at most 0.01 CPU-s in a whole second (start-up settled; if
that does not happen within `--startup-timeout`, this is said and the window begins anyway), the
idle window begins: `--window` seconds in which nothing is written. Reported: start-up
(spawn to settled) and its CPU; CPU seconds in the window (utime + stime of all threads, from
/proc/PID/stat, in 10 ms clock ticks), as % of one core; wake-ups (voluntary context switches
of all threads); lines the daemon logged in the window; RSS at the end and its peak (VmRSS,
VmHWM).

Goals (10,000 folders): no measurable CPU while idle, read here as at most 3 clock ticks
(0.03 CPU-s, 0.1 % of a core) in a 30 s window; RSS ≤ 80 MB (MiB). A full scan every 60 s falls
outside a 30 s window that starts after start-up; `--window 70` takes one in.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    Background,
    Clinic,
    Daemon,
    StampedSandbox,
    cpu_seconds,
    log,
    machine,
    now_utc,
    proc_status_kib,
    wait_quiet,
)

GOAL_CPU_SECONDS = 0.03
GOAL_RSS_MB = 80.0


@dataclass
class Idle:
    folders: int
    startup_s: float
    settled: bool
    startup_cpu: float
    window_cpu: float
    window_s: float
    wakeups: int
    rss_mb: float
    hwm_mb: float
    threads: int
    log_lines: int


def switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` (each one is a wake-up)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return total


def measure(sb: StampedSandbox, root: Path, folders: int, args: argparse.Namespace) -> Idle:
    clinic = Clinic(root / f"folders-{folders}")
    for f in range(folders):
        (clinic.inbox / f"pat_{f:05d}").mkdir()
    config = clinic.config(sb)
    daemon = Daemon(config, clinic.root / "daemon.log")
    try:
        daemon.wait_started(timeout=args.startup_timeout)
        try:
            settled_at = wait_quiet(daemon.pid, args.startup_timeout, window=1.0, max_cpu=0.01)
            settled = True
        except TimeoutError:
            log(f"{folders} folders: still busy {args.startup_timeout:g} s after start-up")
            settled_at, settled = time.time(), False
        startup_cpu = cpu_seconds(daemon.pid)
        lines0 = daemon.log_text().count("\n")
        cpu0, wake0, t0 = startup_cpu, switches(daemon.pid), time.monotonic()
        end = t0 + args.window
        while time.monotonic() < end:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"ingestd exited during the window: {daemon.log_text()}")
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))  # the window itself
        cpu1, wake1, t1 = cpu_seconds(daemon.pid), switches(daemon.pid), time.monotonic()
        rss = proc_status_kib(daemon.pid, "VmRSS") / 1024
        hwm = proc_status_kib(daemon.pid, "VmHWM") / 1024
        threads = proc_status_kib(daemon.pid, "Threads")
        lines = daemon.log_text().count("\n") - lines0
    finally:
        code = daemon.stop()
    if code != 0:
        raise RuntimeError(f"ingestd exited with {code}")
    clinic.remove()
    return Idle(
        folders,
        settled_at - daemon.started_at,
        settled,
        startup_cpu,
        cpu1 - cpu0,
        t1 - t0,
        wake1 - wake0,
        rss,
        hwm,
        threads,
        lines,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--baseline-folders", type=int, default=10)
    parser.add_argument("--window", type=float, default=30.0, help="idle seconds measured")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-idle-"))
    began = time.monotonic()
    background = Background()
    sb = StampedSandbox(latency_seconds=0.05).start()
    try:
        rows = []
        for folders in (args.baseline_folders, args.folders):
            log(f"{folders} folders: start-up, then {args.window:g} s idle")
            rows.append(measure(sb, root, folders, args))
        uploads = len(sb.requests())
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"Idle ({now_utc()}; {machine()})")
    print(f"empty patient folders, nothing written; idle window {args.window:g} s after start-up")
    print()
    print(
        "| folders | start-up s | start-up CPU s | idle CPU s | % of a core | wake-ups/s "
        "| log lines | RSS MB | peak RSS MB | threads |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        startup = f"{r.startup_s:.1f}" if r.settled else f"never settled (> {r.startup_s:.0f})"
        print(
            f"| {r.folders:,} | {startup} | {r.startup_cpu:.2f} | {r.window_cpu:.2f} | "
            f"{100 * r.window_cpu / r.window_s:.2f} | {r.wakeups / r.window_s:.1f} | "
            f"{r.log_lines} | {r.rss_mb:.1f} | {r.hwm_mb:.1f} | {r.threads} |"
        )
    base, big = rows
    print()
    print(
        f"{big.folders:,} ÷ {base.folders:,} folders: idle CPU {big.window_cpu:.2f} s vs "
        f"{base.window_cpu:.2f} s, RSS {big.rss_mb:.1f} vs {base.rss_mb:.1f} MB "
        f"({big.rss_mb / base.rss_mb:.2f} ×)"
    )
    cpu_ok = big.window_cpu <= GOAL_CPU_SECONDS * args.window / 30 + 1e-9
    print(
        f"idle CPU: {big.window_cpu:.2f} s in {args.window:g} s: "
        f"{'meets' if cpu_ok else 'MISSES'} the goal (≤ {GOAL_CPU_SECONDS:g} s per 30 s)"
    )
    print(
        f"RSS: {big.rss_mb:.1f} MB (peak {big.hwm_mb:.1f}): "
        f"{'meets' if big.rss_mb <= GOAL_RSS_MB else 'MISSES'} the goal of ≤ {GOAL_RSS_MB:g} MB"
    )
    print(f"requests to the EHR meanwhile: {uploads}; wall time {time.monotonic() - began:.0f} s")
    print(background.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
