"""Soak: many files, kill -9 at random moments, an upload outage, several instances on one inbox.

Usage (from the repository root; run by hand, not part of `make test`):

    .venv/bin/python bench/soak.py [--files 1000] [--kills 10] [--outage-seconds 60]
                                   [--instances 2] [--latency-ms 30] [--commit-drops 10]
                                   [--write-seconds 30] [--deadline-seconds 900] [--seed N]

The sandbox EHR runs in this process with latency on every upload, and `commit_drop` faults
(the upload is stored, the answer never comes) are sprinkled in at random moments. A writer
thread drops `--files` files into many patient folders (Leyr and Nymbl) while `--instances`
`ingestd run` processes work the same inbox/done/failed, each with its own state folder and
journal. A killer sends SIGKILL to a random instance at `--kills` random moments and restarts it
at once. In the middle of the writing, every upload answers 503 for `--outage-seconds`. Then the
script waits (up to the deadline) until every file has a receipt, stops the instances with
SIGTERM and prints the figures.

Exit 0 only when no file is lost and nothing is duplicated (lost: no receipt, not in the inbox
and not in a work folder; duplicates: EHR documents sharing a SHA-256 plus receipts per source
beyond one), and every file got its receipt before the deadline.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from common import RECEIPT, SOURCE, Clinic

from ingestd.inbox.claims import source_of
from ingestd.sandbox import SANDBOX_CREDENTIALS, Fault, Sandbox
from ingestd.sandbox.samples import docx, pdf, png, tiff

LEYR_MAKERS = (("pdf", pdf), ("png", png), ("docx", docx))
NYMBL_MAKERS = (("pdf", pdf), ("tiff", tiff), ("png", png))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--commit-drops", type=int, default=10)
    parser.add_argument("--write-seconds", type=float, default=30.0)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--deadline-seconds", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary clinic tree")
    args = parser.parse_args()
    if args.instances < 1 or args.files < 1:
        parser.error("--instances and --files must be at least 1")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the clinic tree and the configs --------------------------------------------------------


class SoakClinic(Clinic):
    """bench/common.py's clinic tree, shared by several instances with two targets each."""

    def instance_config(self, sandbox: Sandbox, n: int) -> Path:
        leyr, nymbl = SANDBOX_CREDENTIALS["leyr"], SANDBOX_CREDENTIALS["nymbl"]
        data: dict[str, Any] = {
            "paths": {
                "inbox": str(self.inbox),
                "done": str(self.done),
                "failed": str(self.failed),
                "state": str(self.root / f"state-{n}" / "journal.sqlite"),
            },
            "targets": {
                "leyr": {
                    "kind": "leyr",
                    "base_url": sandbox.leyr_base_url,
                    "emr": leyr["emr"],
                    "care_unit_id": leyr["care_unit_id"],
                    "client_id": leyr["client_id"],
                    "client_secret": "${SOAK_LEYR_SECRET}",
                },
                "nymbl": {
                    "kind": "nymbl",
                    "base_url": sandbox.nymbl_base_url,
                    "token_url": sandbox.nymbl_token_url,
                    "api_key": "${SOAK_NYMBL_KEY}",
                    "client_id": nymbl["client_id"],
                    "client_secret": "${SOAK_NYMBL_SECRET}",
                },
            },
            "watch": {"settle_seconds": 0.3, "scan_interval_seconds": 5},
            "rules": [
                {
                    "name": "to nymbl",
                    "match": {"path": "nymbl/**"},
                    "set": {"title": "{stem}", "type": "Referral", "target": "nymbl"},
                },
                {
                    "name": "everything",
                    "set": {"title": "{stem}", "type": "Scan", "target": "leyr"},
                },
            ],
        }
        path = self.root / f"ingestd-{n}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        path.chmod(0o600)
        return path

    def receipt_data(self) -> list[dict[str, Any]]:
        """Every whole receipt in done/ and failed/, parsed."""
        found = []
        for base in (self.done, self.failed):
            if not base.exists():
                continue
            for path in base.rglob("*" + RECEIPT):
                try:
                    found.append(json.loads(path.read_bytes()))
                except (OSError, ValueError):
                    continue  # being written: a whole receipt appears atomically
        return found

    def work_files(self) -> list[Path]:
        work = self.inbox / ".ingestd" / "work"
        if not work.exists():
            return []
        return [p for p in work.rglob("*") if p.is_file() and not p.name.startswith(".")]


# --- the instances --------------------------------------------------------------------------


class Instance:
    """One `ingestd run` process, restartable; its output goes to a log file."""

    def __init__(self, n: int, config: Path, log_path: Path, env: dict[str, str]) -> None:
        self.n = n
        self.config = config
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "run", "-c", str(self.config)],
                stdout=out,
                stderr=out,
                env=self.env,
                cwd=SOURCE,
            )
        self.starts += 1

    def check(self) -> None:
        """Restart it if it exited on its own (and count that)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append(self.proc.returncode)
            self.start()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


# --- the run --------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_files(args: argparse.Namespace, rng: random.Random) -> list[tuple[str, bytes]]:
    leyr_patients = [f"p_{n}" for n in range(args.patients - args.patients // 4)]
    nymbl_patients = [f"{20000 + n}/nymbl" for n in range(args.patients // 4)]
    files = []
    for n in range(args.files):
        if nymbl_patients and rng.random() < 0.25:
            folder, makers = rng.choice(nymbl_patients), NYMBL_MAKERS
        else:
            folder, makers = rng.choice(leyr_patients), LEYR_MAKERS
        ext, maker = rng.choice(makers)
        sub = rng.choice(["", "", "", "lab/", "referrals/2026-11/"])
        data = maker(f"soak-{n}", rng.randint(2_000, 40_000))
        files.append((f"{folder}/{sub}doc-{n:05d}.{ext}", data))
    return files


def write_files(clinic: Clinic, files: list[tuple[str, bytes]], seconds: float) -> None:
    """Drop the files at an even pace over `seconds`: most by rename from a hidden name, some
    written in place (closed before the settle time is up)."""
    pace = threading.Event()  # never set: the writer's own pace
    start = time.monotonic()
    for n, (rel, data) in enumerate(files):
        path = clinic.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if n % 5 == 0:
            with path.open("wb") as handle:
                handle.write(data)
        else:
            tmp = path.with_name("." + path.name + ".writing")
            tmp.write_bytes(data)
            os.rename(tmp, path)
        due = start + seconds * (n + 1) / len(files)
        pace.wait(max(0.0, due - time.monotonic()))


def main() -> int:
    args = parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="ingestd-soak-"))
    clinic = SoakClinic(root / "clinic")
    sandbox = Sandbox(port=0, latency_seconds=args.latency_ms / 1000).start()
    env = dict(os.environ)
    env["SOAK_LEYR_SECRET"] = SANDBOX_CREDENTIALS["leyr"]["client_secret"]
    env["SOAK_NYMBL_KEY"] = SANDBOX_CREDENTIALS["nymbl"]["api_key"]
    env["SOAK_NYMBL_SECRET"] = SANDBOX_CREDENTIALS["nymbl"]["client_secret"]
    instances = [
        Instance(n, clinic.instance_config(sandbox, n), clinic.root / f"instance-{n}.log", env)
        for n in range(args.instances)
    ]
    files = plan_files(args, rng)
    contents = {rel: sha(data) for rel, data in files}
    log(f"soak in {root} (seed {seed}): {len(files)} files, {args.instances} instance(s)")

    began = time.monotonic()
    for instance in instances:
        instance.start()
    writer = threading.Thread(target=write_files, args=(clinic, files, args.write_seconds))
    writer.start()

    # Moments for the kills, the commit drops and the outage, in seconds from the start.
    busy_until = args.write_seconds + args.outage_seconds + 10
    kill_at = sorted(rng.uniform(1.0, busy_until) for _ in range(args.kills))
    drop_at = sorted(rng.uniform(0.5, busy_until) for _ in range(args.commit_drops))
    outage_from = args.write_seconds * 0.4
    outage_to = outage_from + args.outage_seconds
    events: list[tuple[float, str]] = [(t, "kill") for t in kill_at]
    events += [(t, "commit_drop") for t in drop_at]
    if args.outage_seconds > 0:
        events += [(outage_from, "outage_on"), (outage_to, "outage_off")]
    events.sort()

    kills = 0
    outage_fault = Fault(api="any", route="upload", action="status", status=503, times=None)
    pace = threading.Event()  # never set: the schedule's own pace
    deadline = began + args.deadline_seconds
    timed_out = False
    while True:
        now = time.monotonic() - began
        while events and events[0][0] <= now:
            _, what = events.pop(0)
            if what == "kill":
                victim = rng.choice(instances)
                victim.check()
                victim.kill()
                victim.start()
                kills += 1
                log(f"kill -9 instance {victim.n} ({kills}/{args.kills})")
            elif what == "commit_drop":
                api = rng.choice(["leyr", "leyr", "leyr", "nymbl"])
                sandbox.add_fault(Fault(api=api, route="upload", action="commit_drop"))
            elif what == "outage_on":
                sandbox.add_fault(outage_fault)
                log(f"outage: every upload answers 503 for {args.outage_seconds:g} s")
            elif what == "outage_off":
                # Clears the outage and any commit drop not used yet (counted from the log).
                sandbox.clear_faults()
                log("outage over")
        for instance in instances:
            instance.check()
        if not events and not writer.is_alive():
            filed = {r.get("source") for r in clinic.receipt_data()}
            if set(contents) <= filed:
                break
        if time.monotonic() > deadline:
            timed_out = True
            log("deadline reached before every file had a receipt")
            break
        pace.wait(0.2)
    writer.join()
    finished = time.monotonic()
    exit_codes = [instance.stop() for instance in instances]
    wall = finished - began

    # --- figures ----------------------------------------------------------------------------
    receipts = clinic.receipt_data()
    per_source = collections.Counter(r.get("source") for r in receipts)
    stored = sandbox.documents()
    stored_ids = {d.id for d in stored}
    by_hash = collections.Counter(d.sha256 for d in stored)
    done = [r for r in receipts if r.get("status") == "done"]
    failed = [r for r in receipts if r.get("status") == "failed"]
    in_work = clinic.work_files()
    in_work_sources = {str(source_of(p.name)) for p in in_work}
    waiting = [rel for rel in contents if rel not in per_source and (clinic.inbox / rel).exists()]
    lost = [
        rel
        for rel in contents
        if rel not in per_source
        and not (clinic.inbox / rel).exists()
        and rel not in in_work_sources
    ]
    ehr_duplicates = sum(n - 1 for n in by_hash.values() if n > 1)
    receipt_duplicates = sum(n - 1 for n in per_source.values() if n > 1)
    duplicates = ehr_duplicates + receipt_duplicates
    unknown_ids = [r for r in done if r.get("document_id") not in stored_ids]
    wrong_hash = [r for r in receipts if contents.get(r.get("source", "")) != r.get("sha256")]
    requests = sandbox.requests()
    uploads = [r for r in requests if r.route == "upload"]
    unanswered = sum(1 for r in uploads if r.status == 0)
    refused_503 = sum(1 for r in uploads if r.status == 503)
    failed_kinds = collections.Counter((r.get("error") or {}).get("kind") for r in failed)
    log_text = "".join(
        i.log_path.read_bytes().decode("utf-8", "replace") for i in instances if i.log_path.exists()
    )
    sandbox.stop()

    figures = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("seed", seed),
        ("files", len(contents)),
        ("instances", args.instances),
        ("kills (SIGKILL + restart)", kills),
        ("outage seconds (uploads 503)", f"{args.outage_seconds:g}"),
        ("sandbox latency ms", f"{args.latency_ms:g}"),
        ("commit drops answered with nothing", unanswered),
        ("uploads refused 503", refused_503),
        ("upload requests", len(uploads)),
        ("done", len(done)),
        ("failed", len(failed)),
        ("failed by kind", dict(failed_kinds) or "-"),
        ("waiting in the inbox (no receipt)", len(waiting)),
        ("left in work folders", len(in_work)),
        ("lost (no receipt, not in the inbox)", len(lost)),
        ("duplicates in the EHR (same sha256)", ehr_duplicates),
        ("duplicates in receipts (source > 1)", receipt_duplicates),
        ("receipts whose document_id the EHR lacks", len(unknown_ids)),
        ("receipts whose sha256 is not the file's", len(wrong_hash)),
        ("documents in the EHR", len(stored)),
        ("instances exiting on their own", sum(len(i.unexpected_exits) for i in instances)),
        ("exit codes at SIGTERM", exit_codes),
        ("tracebacks in logs", log_text.count("Traceback")),
        ("worker_error lines", log_text.count("event=worker_error")),
        ("deadline reached", timed_out),
        ("wall time s", f"{wall:.1f}"),
    ]
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"{name:<{width}}  {value}")
    for rel in lost[:10]:
        print(f"lost: {rel}")
    ok = not lost and duplicates == 0 and not timed_out
    print(
        "result: " + ("PASS (lost == duplicates == 0, every file has a receipt)" if ok else "FAIL")
    )
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"tree kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
