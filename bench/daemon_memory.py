"""Whole-daemon peak memory: `ingestd once` processing one large file against one small file.

Usage (from the repository root):

    .venv/bin/python bench/daemon_memory.py [--runs 3] [--sizes 100000,20000000]
        [--apis leyr,nymbl] [--deadline 120]

bench/memory.py measures one upload through a target; this measures the whole process: config
loading, the watcher's looks, claiming, the journal, hashing and type detection, the upload,
filing and the receipt. For each API and size, a fresh clinic tree holds one PDF in one patient
folder; `ingestd once` (settle_seconds 0.2, one target, one rule) runs as the only child of a
small helper process (`--reap`), which reaps it with wait4() and reads that child's own peak RSS
(ru_maxrss). The sandbox EHR runs in a thread of this process. Baseline in the same run: the
same daemon with the smallest file. Medians of `--runs`. Goal: largest − smallest ≤ 5 MB (MiB)
on both APIs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    Background,
    Clinic,
    StampedSandbox,
    bench_env,
    fmt_runs,
    log,
    machine,
    median,
    now_utc,
)

from ingestd.sandbox.samples import pdf

GOAL_MB = 5.0
PATIENT = {"leyr": "pat_0001", "nymbl": "12345"}


def reap(config: Path, log_path: Path, deadline: float) -> None:
    """(In a fresh `--reap` process.) Run `ingestd once` as this small process's only child,
    print the child's own peak RSS in KiB and its exit code. The measuring process must be small:
    a child's ru_maxrss also covers the moment between fork and exec, when it is a copy of its
    parent (the benchmark's parent holds the sandbox and its documents)."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingestd", "once", "-c", str(config)],
            stdout=out,
            stderr=out,
            env=bench_env(),
            cwd=ROOT,
        )
    end = time.monotonic() + deadline
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > end:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)  # poll interval, bounded by the deadline above
    proc.returncode = os.waitstatus_to_exitcode(status)
    print(usage.ru_maxrss, proc.returncode)


def peak_rss_mib(clinic: Clinic, config: Path, deadline: float) -> float:
    """Peak RSS of `ingestd once` in MiB, measured by a fresh `--reap` process."""
    out = subprocess.run(
        [sys.executable, __file__, "--reap", str(config), str(clinic.root / "once.log"),
         "--deadline", str(deadline)],
        check=True, capture_output=True, text=True, timeout=deadline + 30,
    )  # fmt: skip
    kib, code = out.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"ingestd once exited with {code}; see {clinic.root}")
    return int(kib) / 1024


def measure(sb: StampedSandbox, root: Path, api: str, path: Path, deadline: float) -> float:
    sb.reset()
    clinic = Clinic(root / f"{api}-{path.stem}")
    folder = clinic.inbox / PATIENT[api]
    folder.mkdir()
    shutil.copyfile(path, folder / "scan.pdf")
    config = clinic.config(sb, api=api, watch={"settle_seconds": 0.2})
    mib = peak_rss_mib(clinic, config, deadline)
    if len(clinic.receipts()) != 1 or sb.count() != 1:
        raise RuntimeError(f"{api}: the file was not uploaded and filed; see {clinic.root}")
    clinic.remove()
    return mib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="100000,20000000")
    parser.add_argument("--apis", default="leyr,nymbl")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--reap", nargs=2, metavar=("CONFIG", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reap:
        reap(Path(args.reap[0]), Path(args.reap[1]), args.deadline)
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    apis = args.apis.split(",")
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-daemon-memory-"))
    files = {}
    for size in sizes:
        files[size] = root / f"file-{size}.pdf"
        files[size].write_bytes(pdf(f"memory-{size}", size))
    rows: list[tuple[str, int, list[float]]] = []
    background = Background()
    sb = StampedSandbox(latency_seconds=0.0).start()
    try:
        for api in apis:
            runs: dict[int, list[float]] = {size: [] for size in sizes}
            for run in range(args.runs):
                for size in sizes:  # interleaved, so drift hits every size alike
                    runs[size].append(measure(sb, root, api, files[size], args.deadline))
                    log(f"{api} {size:,} bytes run {run + 1}: {runs[size][-1]:.1f} MiB")
            rows += [(api, size, runs[size]) for size in sizes]
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(args.runs, sizes, rows)
    print(background.report())
    return 0


def report(runs: int, sizes: list[int], rows: list[tuple[str, int, list[float]]]) -> None:
    print(f"Whole-daemon peak RSS, `ingestd once` with one file ({now_utc()}; {machine()})")
    print(f"median of {runs} runs; MB = MiB")
    print()
    print("| api | file bytes | peak RSS MB (median) | each run | delta vs smallest MB |")
    print("|---|---:|---:|---|---:|")
    base: dict[str, float] = {}
    verdicts = []
    for api, size, values in rows:
        peak = median(values)
        base.setdefault(api, peak)
        delta = round(peak - base[api], 1) + 0.0
        print(f"| {api} | {size:,} | {peak:.1f} | {fmt_runs(values)} | {delta:+.1f} |")
        if size == sizes[-1] and size != sizes[0]:
            verdict = "meets" if delta <= GOAL_MB else "MISSES"
            verdicts.append(
                f"{api}: {size:,} bytes vs {sizes[0]:,} bytes: {delta:+.1f} MB, {verdict} the "
                f"goal of ≤ {GOAL_MB:g} MB"
            )
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
