"""Fleet scale: 1, 2 and 4 `ingestd run` processes on one host sharing one PostgreSQL journal,
beside one process on its SQLite journal and the bare client, at one total concurrency.

Usage (from the repository root; needs PostgreSQL's server binaries and psycopg, see
tests/tools.sh):

    .venv/bin/python bench/fleet.py [--files 1000] [--size 200000] [--patients 50]
        [--processes 1,2,4] [--concurrency 16] [--runs 1] [--latency-ms 50] [--settle 0.2]

A throwaway PostgreSQL cluster (tests/pg.py: initdb in a temporary folder, fsync off as in the
tests) and the sandbox EHR run on loopback. For each fleet size N, N processes with their own
state folders share one inbox and a fresh database; the total upload concurrency is the same
for every row (each process gets concurrency ÷ N), so the rows differ only in how many
interpreters share the CPU work. Timed as bench/throughput.py times ingestd: from the first file
landing until the EHR holds all of them. CPU per file: every ingestd process, and separately
the PostgreSQL server (postmaster and its backends), user + system.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    Background,
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
from throughput import Batch, check_stored, copy_in, new_clinic, run_client, stage

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


def statements(url: str) -> int:
    """Transactions the database has committed (each autocommit statement is one)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SELECT pg_stat_force_next_flush()")  # PostgreSQL 15: flush this backend's
        found = db.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(found[0]) if found else 0


def run_fleet(
    sb: StampedSandbox, pg: Postgres | None, batch: Batch, root: Path, args: argparse.Namespace,
    processes: int, run: int,
) -> tuple[float, float, float]:  # fmt: skip
    """files/s until stored; ingestd's and the database's CPU ms per file."""
    sb.reset()
    n = len(batch.rels)
    clinic = new_clinic(root, f"fleet-{processes}-{'pg' if pg else 'sqlite'}-r{run}", args.patients)
    url = pg.url(pg.new_database()) if pg else None
    daemons = []
    try:
        for i in range(processes):
            config = clinic.config(
                sb,
                concurrency=max(1, args.concurrency // processes),
                watch={"settle_seconds": args.settle},
            )
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
            wait_quiet(daemon.pid)
        before = sum(cpu_seconds(d.pid) for d in daemons)
        db_before = server_cpu(pg) if pg else 0.0
        statements_before = statements(url) if url else 0
        first = copy_in(clinic, batch, n)
        sb.wait_count(n, args.deadline, f"{processes} process(es): every file stored")
        wait_for(
            lambda: sum(d.log_text().count("event=file_done") for d in daemons) >= n,
            args.deadline,
            "every receipt",
            interval=0.05,
        )
        cpu_ms = (sum(cpu_seconds(d.pid) for d in daemons) - before) * 1000 / n
        db_ms = ((server_cpu(pg) - db_before) * 1000 / n) if pg else 0.0
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
    return n / (max(stored) - first), cpu_ms, db_ms


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200_000, help="bytes per file")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated fleet sizes")
    parser.add_argument("--concurrency", type=int, default=16, help="total, split over a fleet")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=0.2, help="ingestd settle_seconds")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run")
    # throughput.stage reads these
    parser.add_argument("--slow-files", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    sizes = [int(p) for p in args.processes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-fleet-"))
    background = Background()
    began = time.monotonic()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    batch = stage(root, args)
    cluster = start_cluster()
    pg = next(cluster)
    sb = StampedSandbox(latency_seconds=args.latency_ms / 1000).start()
    try:
        for run in range(args.runs):
            result = run_fleet(sb, None, batch, root, args, 1, run)
            rows.setdefault("1 process, SQLite journal", []).append(result)
            log(f"run {run + 1}: 1 process on SQLite {result[0]:.1f} files/s")
            for size in sizes:
                result = run_fleet(sb, pg, batch, root, args, size, run)
                rows.setdefault(f"{size} process(es), PostgreSQL journal", []).append(result)
                log(f"run {run + 1}: {size} process(es) on PostgreSQL {result[0]:.1f} files/s")
            raw, raw_cpu = run_client(
                sb, root, "raw", batch.list_all, args.files, args.concurrency, args.deadline
            )
            rows.setdefault("bare keep-alive client (ceiling)", []).append((raw, raw_cpu or 0, 0))
            log(f"run {run + 1}: raw client {raw:.1f} files/s")
    finally:
        sb.stop()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    raw = median([r[0] for r in rows["bare keep-alive client (ceiling)"]])
    print(f"Fleet scale ({now_utc()}; {machine()})")
    print(f"{args.files} files of {args.size:,} bytes over {args.patients} patient folders; "
          f"sandbox latency {args.latency_ms:g} ms; total concurrency {args.concurrency}; "
          f"median of {args.runs} run(s)")  # fmt: skip
    print()
    print("| what | files/s | ÷ bare client | ingestd CPU ms/file | PostgreSQL CPU ms/file |")
    print("|---|---:|---:|---:|---:|")
    for label, results in rows.items():
        rate = median([r[0] for r in results])
        cpu = median([r[1] for r in results])
        db = median([r[2] for r in results])
        print(f"| {label} | {rate:.1f} | {rate / raw:.2f} | {cpu:.2f} | {db:.2f} |")
    print()
    print(background.report())
    print(f"wall time {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
