"""Fleet scale: 1, 2 and 4 `ingestd run` processes on one host sharing one PostgreSQL journal,
beside one process on its SQLite journal and the bare client.

Usage (from the repository root; needs PostgreSQL's server binaries and psycopg, see
tests/tools.sh):

    .venv/bin/python bench/fleet.py [--files 1500] [--size 200000] [--patients 50]
        [--processes 1,2,4] [--concurrency 16] [--split] [--runs 1] [--latency-ms 50]
        [--settle 0.2] [--threads]

A throwaway PostgreSQL cluster (tests/pg.py: initdb in a temporary folder, fsync off as in the
tests) and the sandbox EHR run on loopback. For each fleet size N, N processes with their own
state folders share one inbox and a fresh database, each at `--concurrency` (the issue's "1, 2, 4
processes at concurrency 16"). So that a fleet's gain is not just more uploads in flight, one
process on SQLite and the bare client run at every fleet's total concurrency too (16 × N), and
the verdict compares the best fleet with the best single process. `--split` instead divides
`--concurrency` over a fleet's processes (one total for every row; the earlier runs in
bench/RESULTS.md). Timed from the first file landing until the EHR holds every document.
The files are written into the inbox under hidden names before the clock starts and renamed
into place while it runs: a scanner writes from another host (through a share), so its writes
are no work of the ingestd host, and the bare client does not copy its files either. CPU per
file: every ingestd process, the PostgreSQL server (postmaster and its backends), and this
process, which hosts the sandbox EHR and renames the files into place (user + system); "cores
busy" is their sum times files/s, so a row near the
machine's core count was limited by the machine, not by ingestd. `--threads` also splits
ingestd's CPU per file by thread (the main loop; the upload workers; watchdog's threads, which
read and group the inotify events; the rest; threads that ended during the run), naming the
threads with py-spy (`.venv/bin/pip install py-spy`; it reads the processes' memory: root).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    ROOT,
    Background,
    Clinic,
    Daemon,
    StampedSandbox,
    cpu_seconds,
    log,
    machine,
    median,
    now_utc,
    wait_for,
    wait_quiet,
)
from throughput import Batch, check_stored, new_clinic, run_client, stage

sys.path.insert(0, str(ROOT))
from tests.pg import Postgres, start_cluster


def server_cpu(pg: Postgres) -> float:
    """CPU seconds of the postmaster and its current children (the backends)."""
    main = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(main)
    children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
    for pid in children:
        try:
            total += cpu_seconds(int(pid))
        except OSError:
            continue  # a backend that just ended
    return total


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id → Python thread name, from `py-spy dump`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return {int(m[1]): m[2] for m in re.finditer(r'^Thread (\d+) \(\w+\): "([^"]+)"', out, re.M)}


def thread_kind(name: str) -> str:
    if name == "MainThread":
        return "main loop"
    if name.startswith("ingestd-worker-"):
        return "workers"
    if name == "InotifyFD-Dispatcher" or re.fullmatch(r"Thread-\d+", name):
        return "watchdog"  # its observer, emitter and inotify reader (unnamed but for one)
    return "other"


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of `pids`, by (pid, thread id), from schedstat (in ns: the
    ticks of /proc/…/stat, truncated per thread, would lose up to 10 ms a thread)."""
    found = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                ran = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]
            except OSError:
                continue  # a thread that just ended
            found[(pid, int(tid))] = int(ran) / 1e9
    return found


def system_seconds(pid: int) -> float:
    """The system (kernel) part of a process's CPU seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[12]) / os.sysconf("SC_CLK_TCK")


def statements(url: str) -> int:
    """Transactions the database has committed (each autocommit statement is one)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SELECT pg_stat_force_next_flush()")  # PostgreSQL 15: flush this backend's
        found = db.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(found[0]) if found else 0


def prestage(clinic: Clinic, batch: Batch, n: int) -> list[tuple[Path, Path]]:
    """Write the first `n` files into the inbox under hidden names (ingestd leaves those
    alone) before the clock starts: (hidden, final) pairs for `land`."""
    pairs = []
    for rel in batch.rels[:n]:
        path = clinic.inbox / rel
        hidden = path.with_name("." + path.name + ".part")
        shutil.copyfile(batch.staging / rel, hidden)
        pairs.append((hidden, path))
    return pairs


def land(pairs: list[tuple[Path, Path]]) -> float:
    """Rename each file into place, as a careful scanner finishes; when the first landed."""
    first = 0.0
    for i, (hidden, path) in enumerate(pairs):
        os.rename(hidden, path)
        if i == 0:
            first = time.time()
    return first


@dataclass
class Row:
    label: str
    total: int  # uploads in flight, all processes together
    rate: list[float] = field(default_factory=list)  # files/s of each run
    cpu: list[float] = field(default_factory=list)  # ingestd CPU ms per file
    db: list[float] = field(default_factory=list)  # PostgreSQL server CPU ms per file
    ehr: list[float] = field(default_factory=list)  # this process (the sandbox EHR)
    threads: list[dict[str, float]] = field(default_factory=list)  # ingestd CPU ms/file by kind

    def add(
        self, rate: float, cpu: float, db: float, ehr: float, threads: dict[str, float]
    ) -> None:
        self.rate.append(rate)
        self.cpu.append(cpu)
        self.db.append(db)
        self.ehr.append(ehr)
        self.threads.append(threads)


def run_fleet(
    sb: StampedSandbox, pg: Postgres | None, batch: Batch, root: Path, args: argparse.Namespace,
    processes: int, each: int, run: int,
) -> tuple[float, float, float, float, dict[str, float]]:  # fmt: skip
    """files/s until stored; ingestd's, the database's and the EHR's CPU ms per file; with
    --threads, ingestd's CPU ms per file by kind of thread."""
    sb.reset()
    n = len(batch.rels)
    name = f"fleet-{processes}x{each}-{'pg' if pg else 'sqlite'}-r{run}"
    clinic = new_clinic(root, name, args.patients)
    url = pg.url(pg.new_database()) if pg else None
    daemons = []
    try:
        for i in range(processes):
            config = clinic.config(sb, concurrency=each, watch={"settle_seconds": args.settle})
            text = config.read_text().replace("journal.sqlite", f"journal-{i}.sqlite")
            text = text.replace(str(clinic.state.parent), str(clinic.root / f"state-{i}"))
            if url:
                text += f"journal:\n  url: {url}\n"
            mine = clinic.root / f"ingestd-{i}.yaml"
            mine.write_text(text)
            mine.chmod(0o600)
            daemons.append(Daemon(mine, clinic.root / f"daemon-{i}.log"))
        for daemon in daemons:
            daemon.wait_started()
        arrivals = prestage(clinic, batch, n)
        for daemon in daemons:
            wait_quiet(daemon.pid)
        before = sum(cpu_seconds(d.pid) for d in daemons)
        system_before = sum(system_seconds(d.pid) for d in daemons)
        db_before = server_cpu(pg) if pg else 0.0
        ehr_before = cpu_seconds(os.getpid())
        statements_before = statements(url) if url else 0
        pids = [d.pid for d in daemons]
        names = {tid: name for pid in pids for tid, name in thread_names(pid).items()} if (
            args.threads
        ) else {}  # fmt: skip
        threads_before = thread_cpu(pids) if args.threads else {}
        first = land(arrivals)
        sb.wait_count(n, args.deadline, f"{processes} process(es): every file stored")
        wait_for(
            lambda: sum(d.log_text().count("event=file_done") for d in daemons) >= n,
            args.deadline,
            "every receipt",
            interval=0.05,
        )
        cpu_ms = (sum(cpu_seconds(d.pid) for d in daemons) - before) * 1000 / n
        threads: dict[str, float] = {}
        if args.threads:
            for (pid, tid), spent in thread_cpu(pids).items():
                kind = thread_kind(names.get(tid, ""))
                used = (spent - threads_before.get((pid, tid), 0.0)) * 1000 / n
                threads[kind] = threads.get(kind, 0.0) + used
            # Threads that started and ended during the run are in the process's total only.
            threads["ended"] = cpu_ms - sum(threads.values())
        system_ms = (sum(system_seconds(d.pid) for d in daemons) - system_before) * 1000 / n
        log(f"{processes} process(es): ingestd CPU {cpu_ms:.2f} ms/file, {system_ms:.2f} system")
        db_ms = ((server_cpu(pg) - db_before) * 1000 / n) if pg else 0.0
        ehr_ms = (cpu_seconds(os.getpid()) - ehr_before) * 1000 / n
        if url:
            time.sleep(1.0)  # the backends' statistics reach the server within a second
            per_file = (statements(url) - statements_before) / n
            log(f"{processes} process(es): {per_file:.1f} database statements per file")
    finally:
        codes = [d.stop() for d in daemons]
    stored = check_stored(sb, batch, n, f"{processes} process(es)")
    if len(clinic.receipts()) != n or clinic.receipts("failed") or any(codes):
        raise RuntimeError(f"{processes} process(es): receipts or exit codes wrong: {codes}")
    clinic.remove()
    return n / (max(stored) - first), cpu_ms, db_ms, ehr_ms, threads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--size", type=int, default=200_000, help="bytes per file")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated fleet sizes")
    parser.add_argument("--concurrency", type=int, default=16, help="per process")
    parser.add_argument("--split", action="store_true", help="--concurrency is the total")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=0.2, help="ingestd settle_seconds")
    parser.add_argument("--threads", action="store_true", help="ingestd's CPU by thread")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run")
    # throughput.stage reads these
    parser.add_argument("--slow-files", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def plan(args: argparse.Namespace) -> list[tuple[str, bool, int, int]]:
    """(label, on PostgreSQL, processes, concurrency each) for every ingestd row, in order."""
    sizes = [int(p) for p in args.processes.split(",")]
    rows: list[tuple[str, bool, int, int]] = []
    if args.split:
        rows.append(("1 process, SQLite", False, 1, args.concurrency))
        for size in sizes:
            each = max(1, args.concurrency // size)
            rows.append((f"{size} process(es), PostgreSQL, {each} each", True, size, each))
        return rows
    totals = sorted({size * args.concurrency for size in sizes})
    rows.extend((f"1 process, SQLite, concurrency {total}", False, 1, total) for total in totals)
    each = args.concurrency
    rows.extend(
        (f"{size} process(es), PostgreSQL, {each} each", True, size, each) for size in sizes
    )
    return rows


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-fleet-"))
    background = Background()
    began = time.monotonic()
    rows: dict[str, Row] = {}
    bare: dict[int, Row] = {}
    batch = stage(root, args)
    cluster = start_cluster()
    pg = next(cluster)
    sb = StampedSandbox(latency_seconds=args.latency_ms / 1000).start()
    try:
        for run in range(args.runs):
            for label, shared, processes, each in plan(args):
                result = run_fleet(sb, pg if shared else None, batch, root, args, processes,
                                   each, run)  # fmt: skip
                rows.setdefault(label, Row(label, processes * each)).add(*result)
                log(f"run {run + 1}: {label}: {result[0]:.1f} files/s")
            for total in sorted({row.total for row in rows.values()}):
                ehr_before = cpu_seconds(os.getpid())
                raw, raw_cpu = run_client(
                    sb, root, "raw", batch.list_all, args.files, total, args.deadline
                )
                ehr = (cpu_seconds(os.getpid()) - ehr_before) * 1000 / args.files
                label = f"bare keep-alive client, concurrency {total}"
                bare.setdefault(total, Row(label, total)).add(raw, raw_cpu or 0.0, 0.0, ehr, {})
                log(f"run {run + 1}: {label}: {raw:.1f} files/s")
    finally:
        sb.stop()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    report(args, rows, bare)
    print()
    print(background.report())
    print(f"wall time {time.monotonic() - began:.0f} s")
    return 0


def report(args: argparse.Namespace, rows: dict[str, Row], bare: dict[int, Row]) -> None:
    print(f"Fleet scale ({now_utc()}; {machine()})")
    import psycopg

    print(f"{args.files} files of {args.size:,} bytes over {args.patients} patient folders; "
          f"sandbox latency {args.latency_ms:g} ms; median of {args.runs} run(s); "
          f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__})")  # fmt: skip
    print()
    print("| what | in flight | files/s | ÷ bare client | ingestd CPU ms/file "
          "| PostgreSQL CPU ms/file | EHR stand-in CPU ms/file | cores busy |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in [*rows.values(), *bare.values()]:
        rate = median(row.rate)
        ceiling = median(bare[row.total].rate)
        cpu, db, ehr = median(row.cpu), median(row.db), median(row.ehr)
        busy = (cpu + db + ehr) * rate / 1000
        print(f"| {row.label} | {row.total} | {rate:.1f} | {rate / ceiling:.2f} | {cpu:.2f} "
              f"| {db:.2f} | {ehr:.2f} | {busy:.2f} |")  # fmt: skip
    if any(row.threads and row.threads[0] for row in rows.values()):
        kinds = ("main loop", "workers", "watchdog", "other", "ended")
        print()
        print("ingestd CPU ms/file by thread (medians):")
        print()
        print("| what | " + " | ".join(kinds) + " |")
        print("|---|" + "---:|" * len(kinds))
        for row in rows.values():
            cells = [median([t.get(kind, 0.0) for t in row.threads]) for kind in kinds]
            print(f"| {row.label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    single = [row for row in rows.values() if row.label.startswith("1 process, SQLite")]
    fleets = [row for row in rows.values() if "PostgreSQL" in row.label]
    if not single or not fleets:
        return
    best_single = max(single, key=lambda row: median(row.rate))
    best_fleet = max(fleets, key=lambda row: median(row.rate))
    one_pg = next((row for row in fleets if row.label.startswith("1 process")), None)
    print()
    print(f"best single process: {median(best_single.rate):.1f} files/s ({best_single.label}); "
          f"best fleet: {median(best_fleet.rate):.1f} files/s ({best_fleet.label}) = "
          f"{median(best_fleet.rate) / median(best_single.rate):.2f}x")  # fmt: skip
    if one_pg is not None:
        print(f"best fleet ÷ one process on the same PostgreSQL journal: "
              f"{median(best_fleet.rate) / median(one_pg.rate):.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
