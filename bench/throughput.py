"""Throughput: how fast `ingestd run` moves a burst of files into the EHR, against the ceiling and
against what an admin would script, all measured in the same run at equal concurrency.

Usage (from the repository root):

    .venv/bin/python bench/throughput.py [--files 1000] [--size 200000] [--patients 50]
        [--concurrency 4,8,10,16] [--runs 3] [--latency-ms 50] [--settle 0.2]
        [--slow-files 200] [--slow-runs 1] [--skip-slow] [--deadline 300] [--keep]

The sandbox EHR runs in this process (loopback, `--latency-ms` added to every upload) and stamps
each document with `time.time()` when it stores it. Every client is a process of its own:

- ingestd: `ingestd run` (target `concurrency` = N, `settle_seconds` = --settle) starts on an
  inbox holding only the empty patient folders; once it is up and idle, the files are copied in
  the way a scanner writes them (hidden temp name, then rename). Timed from the first file landing
  until the EHR holds all of them ("stored"), and until the last receipt is linked into place in
  done/ (its inode ctime; "receipts").
- raw client (the ceiling): a keep-alive `requests.Session` with N threads posting the same
  files as Leyr JSON with base64 content, the same headers (bench/clients.py `raw`). Timed from
  its go until the EHR holds all of them.
- snippet loop: the Leyr guide's own snippet (read, base64, `requests.post(json=...)`) in a
  sequential loop (bench/clients.py `snippet`).
- inotifywait + curl: bench/inotify_curl.sh (`inotifywait -m -r -e close_write,moved_to`, then
  base64 + curl per event, one at a time), fed by the same copy as ingestd. Skipped with a message
  when inotifywait or curl is missing (`apt-get install inotify-tools curl`).

The two sequential baselines run `--slow-runs` times over the first `--slow-files` files (a
sequential loop's rate does not depend on how many files it is given); ingestd and the raw client
run `--runs` times over all files at each concurrency. Figures: files/s, medians, and the ratios
ingestd ÷ raw client and ingestd ÷ each baseline. Goals: ingestd ≥ 0.9 × raw client at equal
concurrency and ≥ 8 × the snippet loop and inotifywait + curl.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BENCH,
    LEYR,
    Background,
    Client,
    Clinic,
    Daemon,
    StampedSandbox,
    cpu_seconds,
    drop,
    fmt_runs,
    log,
    machine,
    median,
    now_utc,
    wait_for,
    wait_quiet,
)

from ingestd.sandbox.samples import pdf

GOAL_RAW = 0.9
GOAL_BASELINES = 8.0


@dataclass
class Batch:
    """The files: staged once, outside any inbox; `rels` are their inbox-relative paths."""

    staging: Path
    rels: list[str]
    sha256: set[str]
    list_all: Path
    list_slow: Path
    n_slow: int


@dataclass
class Results:
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)  # CPU ms per file

    def add(self, key: str, rate: float) -> None:
        self.rates.setdefault(key, []).append(rate)

    def add_cpu(self, key: str, ms_per_file: float) -> None:
        self.cpu_ms.setdefault(key, []).append(ms_per_file)


def stage(root: Path, args: argparse.Namespace) -> Batch:
    staging = root / "staging"
    rels, digests = [], set()
    lines = []
    for i in range(args.files):
        patient = f"pat_{i % args.patients:04d}"
        rel = f"{patient}/scan-{i:05d}.pdf"
        data = pdf(f"throughput-{i}", args.size)
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rels.append(rel)
        digests.add(hashlib.sha256(data).hexdigest())
        lines.append(f"{patient}\t{path}")
    list_all = root / "list-all.txt"
    list_all.write_text("\n".join(lines) + "\n")
    n_slow = min(args.slow_files, args.files)
    list_slow = root / "list-slow.txt"
    list_slow.write_text("\n".join(lines[:n_slow]) + "\n")
    return Batch(staging, rels, digests, list_all, list_slow, n_slow)


def new_clinic(root: Path, name: str, patients: int) -> Clinic:
    clinic = Clinic(root / name)
    for p in range(patients):
        (clinic.inbox / f"pat_{p:04d}").mkdir()
    return clinic


def check_stored(sb: StampedSandbox, batch: Batch, n: int, what: str) -> list[float]:
    stamps = sb.stamps()
    if len(stamps) != n:
        raise RuntimeError(f"{what}: the EHR holds {len(stamps)} documents, expected {n}")
    if n == len(batch.rels) and {sha for _, sha in stamps} != batch.sha256:
        raise RuntimeError(f"{what}: the stored contents are not the files")
    return [t for t, _ in stamps]


def copy_in(clinic: Clinic, batch: Batch, n: int) -> float:
    """Copy the first `n` files into the inbox; the time the first one landed."""
    first = 0.0
    for i, rel in enumerate(batch.rels[:n]):
        landed = drop(clinic.inbox, rel, batch.staging / rel)
        if i == 0:
            first = landed
    return first


def run_ingestd(
    sb: StampedSandbox, batch: Batch, root: Path, args: argparse.Namespace, conc: int, run: int
) -> tuple[float, float, float]:
    """files/s until stored, files/s until every receipt, and the daemon's CPU ms per file."""
    sb.reset()
    n = len(batch.rels)
    clinic = new_clinic(root, f"ingestd-c{conc}-r{run}", args.patients)
    config = clinic.config(sb, concurrency=conc, watch={"settle_seconds": args.settle})
    daemon = Daemon(config, clinic.root / "daemon.log")
    try:
        daemon.wait_started()
        wait_quiet(daemon.pid)
        cpu_before = cpu_seconds(daemon.pid)
        first = copy_in(clinic, batch, n)
        sb.wait_count(n, args.deadline, "ingestd: every file stored")
        wait_for(
            lambda: daemon.log_text().count("event=file_done") >= n,
            args.deadline,
            "ingestd: every receipt",
            interval=0.05,
        )
        cpu_ms = (cpu_seconds(daemon.pid) - cpu_before) * 1000 / n
    finally:
        code = daemon.stop()
    stored = check_stored(sb, batch, n, "ingestd")
    receipts = clinic.receipts()
    if len(receipts) != n or clinic.receipts("failed"):
        raise RuntimeError(f"ingestd: {len(receipts)} receipts in done/, expected {n}")
    last_receipt = max(os.stat(p).st_ctime for p in receipts)
    if code != 0:
        raise RuntimeError(f"ingestd exited with {code}")
    if not args.keep:
        clinic.remove()
    return n / (max(stored) - first), n / (last_receipt - first), cpu_ms


def run_client(
    sb: StampedSandbox, root: Path, mode: str, listing: Path, n: int, conc: int, deadline: float
) -> tuple[float, float | None]:
    """files/s, and the client's CPU ms per file when it reports it."""
    sb.reset()
    client = Client(
        [mode, "--base-url", sb.leyr_base_url, "--list", str(listing), "--concurrency", str(conc)],
        root / f"client-{mode}.log",
    )
    client.wait_ready()
    began = client.go()
    sb.wait_count(n, deadline, f"{mode} client: every file stored")
    summary = client.finish(deadline)
    if not summary.startswith(f"ok {n} errors 0"):
        raise RuntimeError(f"{mode} client: {summary}")
    stored = [t for t, _ in sb.stamps()]
    if len(stored) != n:
        raise RuntimeError(f"{mode} client: the EHR holds {len(stored)}, expected {n}")
    words = summary.split()
    cpu_ms = float(words[words.index("cpu") + 1]) * 1000 / n if "cpu" in words else None
    return n / (max(stored) - began), cpu_ms


def inotify_missing() -> str | None:
    missing = [tool for tool in ("inotifywait", "curl", "base64") if shutil.which(tool) is None]
    if not missing:
        return None
    return (
        f"inotifywait + curl baseline SKIPPED: {', '.join(missing)} not installed "
        "(apt-get update && apt-get install inotify-tools curl)"
    )


def run_inotify(sb: StampedSandbox, batch: Batch, root: Path, args: argparse.Namespace) -> float:
    sb.reset()
    n = batch.n_slow
    clinic = new_clinic(root, "inotify-curl", args.patients)
    prefix = f"{sb.leyr_base_url}/emrs/{LEYR['emr']}/care-units/{LEYR['care_unit_id']}/patients"
    err = clinic.root / "inotify_curl.log"
    env = {
        **os.environ,
        "LEYR_CLIENT_ID": LEYR["client_id"],
        "LEYR_CLIENT_SECRET": LEYR["client_secret"],
    }
    with err.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(BENCH / "inotify_curl.sh"), str(clinic.inbox), prefix],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,  # its own process group: bash, inotifywait, curl
        )
    try:
        wait_for(lambda: b"Watches established" in err.read_bytes(), 30, "inotifywait watches")
        first = copy_in(clinic, batch, n)
        sb.wait_count(n, args.deadline, "inotifywait + curl: every file stored")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this script started
        proc.wait(10)
    stored = check_stored(sb, batch, n, "inotifywait + curl")
    if b"upload failed" in err.read_bytes():
        raise RuntimeError("inotifywait + curl: some uploads failed")
    if not args.keep:
        clinic.remove()
    return n / (max(stored) - first)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200_000, help="bytes per file")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--concurrency", default="4,8,10,16", help="comma-separated levels")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=0.2, help="ingestd settle_seconds")
    parser.add_argument("--slow-files", type=int, default=200)
    parser.add_argument("--slow-runs", type=int, default=1)
    parser.add_argument("--skip-slow", action="store_true", help="no sequential baselines")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-throughput-"))
    results = Results()
    notes: list[str] = []
    began = time.monotonic()
    background = Background()
    log(f"staging {args.files} files of {args.size} bytes in {root}")
    batch = stage(root, args)
    sb = StampedSandbox(latency_seconds=args.latency_ms / 1000).start()
    try:
        for run in range(args.runs):
            for conc in levels:
                stored, receipts, cpu = run_ingestd(sb, batch, root, args, conc, run)
                results.add(f"ingestd-stored-{conc}", stored)
                results.add(f"ingestd-receipts-{conc}", receipts)
                results.add_cpu(f"ingestd-{conc}", cpu)
                log(f"run {run + 1} c={conc}: ingestd {stored:.1f} files/s stored, "
                    f"{receipts:.1f} with receipts, {cpu:.2f} CPU ms/file")  # fmt: skip
                raw, raw_cpu = run_client(
                    sb, root, "raw", batch.list_all, args.files, conc, args.deadline
                )
                results.add(f"raw-{conc}", raw)
                if raw_cpu is not None:
                    results.add_cpu(f"raw-{conc}", raw_cpu)
                log(f"run {run + 1} c={conc}: raw client {raw:.1f} files/s, "
                    f"{raw_cpu or 0:.2f} CPU ms/file")  # fmt: skip
        if not args.skip_slow:
            for run in range(args.slow_runs):
                rate, _ = run_client(
                    sb, root, "snippet", batch.list_slow, batch.n_slow, 1, args.deadline
                )
                results.add("snippet", rate)
                log(f"run {run + 1}: snippet loop {rate:.1f} files/s")
                skip = inotify_missing()
                if skip is None:
                    rate = run_inotify(sb, batch, root, args)
                    results.add("inotify", rate)
                    log(f"run {run + 1}: inotifywait + curl {rate:.1f} files/s")
                elif skip not in notes:
                    notes.append(skip)
    finally:
        sb.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    notes.append(background.report())
    report(args, levels, batch, results, notes, time.monotonic() - began)
    return 0


def report(
    args: argparse.Namespace,
    levels: list[int],
    batch: Batch,
    results: Results,
    notes: list[str],
    wall: float,
) -> None:
    rates = results.rates
    latency = args.latency_ms / 1000
    print(f"Throughput ({now_utc()}; {machine()})")
    print(
        f"{args.files} files of {args.size:,} bytes over {args.patients} patient folders; "
        f"sandbox latency {args.latency_ms:g} ms per upload; ingestd settle_seconds {args.settle:g}"
    )
    print(
        f"ingestd and raw client: median of {args.runs} runs over all files; snippet loop and "
        f"inotifywait + curl: {args.slow_runs} run(s) over the first {batch.n_slow} files"
    )
    print()
    print("| method | concurrency | files | files/s (median) | each run |")
    print("|---|---:|---:|---:|---|")
    rows = []
    for conc in levels:
        rows += [
            ("ingestd, until stored in the EHR", str(conc), args.files, f"ingestd-stored-{conc}"),
            ("ingestd, until every receipt", str(conc), args.files, f"ingestd-receipts-{conc}"),
            ("raw keep-alive client (ceiling)", str(conc), args.files, f"raw-{conc}"),
        ]
    rows += [
        ("Leyr guide snippet, sequential loop", "1", batch.n_slow, "snippet"),
        ("inotifywait + curl", "1", batch.n_slow, "inotify"),
    ]
    for label, conc_text, n, key in rows:
        if key in rates:
            values = rates[key]
            print(f"| {label} | {conc_text} | {n} | {median(values):.1f} | {fmt_runs(values)} |")
    print()
    print("| concurrency | upper bound N ÷ latency | ingestd ÷ raw | ingestd ÷ snippet loop "
          "| ingestd ÷ inotifywait+curl |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    verdicts = []
    for conc in levels:
        stored = median(rates[f"ingestd-stored-{conc}"])
        receipts = median(rates[f"ingestd-receipts-{conc}"])
        raw = median(rates[f"raw-{conc}"])
        cells = [f"{stored / raw:.2f} (receipts {receipts / raw:.2f})"]
        verdicts.append(
            f"c={conc}: ingestd ÷ raw client = {stored / raw:.2f} (until every receipt "
            f"{receipts / raw:.2f}): {'meets' if stored / raw >= GOAL_RAW else 'MISSES'} "
            f"the goal of ≥ {GOAL_RAW}"
        )
        for key, name in (("snippet", "snippet loop"), ("inotify", "inotifywait + curl")):
            if key not in rates:
                cells.append("skipped")
                continue
            base = median(rates[key])
            cells.append(f"{stored / base:.2f} (receipts {receipts / base:.2f})")
            bound = conc / latency / base
            verdicts.append(
                f"c={conc}: ingestd ÷ {name} = {stored / base:.2f}: "
                f"{'meets' if stored / base >= GOAL_BASELINES else 'MISSES'} the goal of "
                f"≥ {GOAL_BASELINES:g} (at most {bound:.1f} is possible at this concurrency: "
                f"{conc} ÷ {args.latency_ms:g} ms = {conc / latency:.0f} files/s)"
            )
        print(f"| {conc} | {conc / latency:.0f} files/s | " + " | ".join(cells) + " |")
    print()
    print("CPU per file (user + system, all threads; median of the runs):")
    print("| concurrency | ingestd run (whole daemon) ms | raw client ms | ratio |")
    print("|---:|---:|---:|---:|")
    for conc in levels:
        mine = median(results.cpu_ms[f"ingestd-{conc}"])
        theirs = results.cpu_ms.get(f"raw-{conc}")
        if theirs:
            ratio = f"{mine / median(theirs):.1f} ×"
            print(f"| {conc} | {mine:.2f} | {median(theirs):.2f} | {ratio} |")
        else:
            print(f"| {conc} | {mine:.2f} | - | - |")
    print()
    for line in verdicts:
        print(line)
    for note in notes:
        print(note)
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
