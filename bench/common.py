"""Shared helpers for the benchmarks in bench/ (not a benchmark itself).

- `StampedSandbox`: the sandbox EHR (in this process, on loopback) with a store that records
  `time.time()` the moment each document is stored, so timings come from the EHR side with
  microsecond precision (the sandbox's own `created_at` is to the second).
- `Clinic`: a temporary inbox/done/failed/state tree and the config `ingestd run`/`once` reads.
- `Daemon`: `ingestd run` (or `once`) as a process of its own, its log in a file.
- `Client`: one of the baseline clients in bench/clients.py as a process, started and then told
  to go, so that its interpreter start-up is never timed.
- Small things: `wait_for` (every wait is a poll with a deadline), percentiles, /proc readers.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# INGESTD_SOURCE=/other/checkout measures that tree's ingestd (and sandbox) with these scripts:
# an A/B between two commits on the same machine, minutes apart.
SOURCE = Path(os.environ.get("INGESTD_SOURCE") or ROOT).resolve()
sys.path.insert(0, str(SOURCE))

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox  # noqa: E402
from ingestd.sandbox.store import Scope, Store, StoredDocument  # noqa: E402

T = TypeVar("T")
RECEIPT = ".receipt.json"
LEYR = SANDBOX_CREDENTIALS["leyr"]
NYMBL = SANDBOX_CREDENTIALS["nymbl"]
SECRETS_ENV = {
    "BENCH_LEYR_SECRET": LEYR["client_secret"],
    "BENCH_NYMBL_KEY": NYMBL["api_key"],
    "BENCH_NYMBL_SECRET": NYMBL["client_secret"],
}


def log(message: str) -> None:
    """Progress on stderr; the figures go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)  # a poll interval, bounded by the deadline above


def bench_env() -> dict[str, str]:
    return {**os.environ, **SECRETS_ENV}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always one of the measured values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fmt_runs(values: Sequence[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


# --- the sandbox, stamped ---------------------------------------------------------------------


class StampedStore(Store):
    """The sandbox's store, also recording when each document was stored (wall clock)."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp_lock = threading.Lock()
        self._stamps: list[tuple[float, str]] = []  # (time.time(), sha256), in storing order

    def add(self, scope: Scope, doc: StoredDocument) -> None:
        super().add(scope, doc)
        stamp = time.time()
        with self._stamp_lock:
            self._stamps.append((stamp, doc.sha256))

    def stamps(self) -> list[tuple[float, str]]:
        with self._stamp_lock:
            return list(self._stamps)

    def count(self) -> int:
        with self._stamp_lock:
            return len(self._stamps)

    def reset(self) -> None:
        super().reset()
        with self._stamp_lock:
            self._stamps.clear()


class StampedSandbox(Sandbox):
    """The sandbox EHR with a `StampedStore`. Documents are stored *before* the sandbox sleeps
    its latency and answers, so a stamp never includes `latency_seconds`."""

    def __init__(self, latency_seconds: float = 0.05) -> None:
        super().__init__(port=0, latency_seconds=latency_seconds)
        self.store = StampedStore()
        self._context.store = self.store  # the benchmark's own wrapper, not the package's

    def start(self) -> StampedSandbox:
        super().start()
        return self

    def stamps(self) -> list[tuple[float, str]]:
        return self.store.stamps()

    def count(self) -> int:
        return self.store.count()

    def wait_count(
        self, n: int, timeout: float, what: str, interval: float = 0.02
    ) -> list[tuple[float, str]]:
        wait_for(lambda: self.count() >= n, timeout, what, interval)
        return self.stamps()


def leyr_documents_url(base_url: str, patient: str) -> str:
    return (
        f"{base_url}/emrs/{LEYR['emr']}/care-units/{LEYR['care_unit_id']}"
        f"/patients/{patient}/documents"
    )


# --- the clinic tree --------------------------------------------------------------------------


@dataclass
class Clinic:
    root: Path
    inbox: Path = field(init=False)
    done: Path = field(init=False)
    failed: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inbox = self.root / "inbox"
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        self.state = self.root / "state" / "journal.sqlite"
        self.inbox.mkdir(parents=True, exist_ok=True)

    def config(
        self,
        sandbox: Sandbox,
        *,
        api: str = "leyr",
        concurrency: int = 4,
        watch: dict[str, Any] | None = None,
    ) -> Path:
        """A config with one target (`api`) and one rule sending everything to it. `watch`
        holds the watch settings given (the rest are ingestd's defaults)."""
        if api == "leyr":
            target: dict[str, Any] = {
                "kind": "leyr",
                "base_url": sandbox.leyr_base_url,
                "emr": LEYR["emr"],
                "care_unit_id": LEYR["care_unit_id"],
                "client_id": LEYR["client_id"],
                "client_secret": "${BENCH_LEYR_SECRET}",
            }
        else:
            target = {
                "kind": "nymbl",
                "base_url": sandbox.nymbl_base_url,
                "token_url": sandbox.nymbl_token_url,
                "api_key": "${BENCH_NYMBL_KEY}",
                "client_id": NYMBL["client_id"],
                "client_secret": "${BENCH_NYMBL_SECRET}",
            }
        target["concurrency"] = concurrency
        data: dict[str, Any] = {
            "paths": {
                "inbox": str(self.inbox),
                "done": str(self.done),
                "failed": str(self.failed),
                "state": str(self.state),
            },
            "targets": {api: target},
            "rules": [{"name": "all", "set": {"title": "{stem}", "type": "Scan", "target": api}}],
        }
        if watch:
            data["watch"] = dict(watch)
        path = self.root / "ingestd.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        path.chmod(0o600)
        return path

    def receipts(self, where: str = "done") -> list[Path]:
        base = self.done if where == "done" else self.failed
        found: list[Path] = []
        if not base.exists():
            return found
        for dirpath, _, names in os.walk(base):
            found += [Path(dirpath, n) for n in names if n.endswith(RECEIPT) and n[0] != "."]
        return found

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def drop(inbox: Path, rel: str, source: Path | bytes) -> float:
    """Put a file into the inbox like a careful scanner: a hidden temp name, then a rename.
    Returns the wall-clock time just after the rename (the finished file has landed)."""
    path = inbox / rel
    tmp = path.with_name("." + path.name + ".part")
    if isinstance(source, bytes):
        tmp.write_bytes(source)
    else:
        shutil.copyfile(source, tmp)
    os.rename(tmp, path)
    return time.time()


# --- processes --------------------------------------------------------------------------------


class Daemon:
    """`ingestd <command> -c CONFIG` as a process of its own; its output goes to `log_path`."""

    def __init__(self, config: Path, log_path: Path, command: str = "run") -> None:
        self.log_path = log_path
        self.started_at = time.time()
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingestd", command, "-c", str(config)],
                stdout=out,
                stderr=out,
                env=bench_env(),
                cwd=SOURCE,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_started(self, timeout: float = 30.0) -> float:
        """Wait for `event=started` in the log; the wall-clock time it was seen (±poll)."""

        def started() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingestd exited early ({self.proc.returncode}):\n"
                                   + self.log_text()[-2000:])  # fmt: skip
            return "event=started" in self.log_text()

        wait_for(started, timeout, "ingestd start-up", interval=0.01)
        return time.time()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Client:
    """A baseline client (bench/clients.py) in its own process. It prepares (imports, reads
    its file list), says `ready`, and starts only when told `go`: start-up is never timed."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "clients.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=bench_env(),
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout

    def wait_ready(self, timeout: float = 30.0) -> None:
        line = _readline_with_deadline(self.stdout, timeout)
        if line.strip() != "ready":
            raise RuntimeError(f"client did not get ready: {line!r}")

    def go(self) -> float:
        started = time.time()
        self.stdin.write("go\n")
        self.stdin.flush()
        return started

    def send(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def finish(self, timeout: float = 600.0) -> str:
        """Close its input and wait for it to exit; its last line of output (a summary)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        self._log.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"client exited with {self.proc.returncode}")
        lines = out.strip().splitlines()
        return lines[-1] if lines else ""


def _readline_with_deadline(stream: IO[str], timeout: float) -> str:
    """readline() in a helper thread so that a hung child cannot hang the benchmark."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise TimeoutError(f"no line from the client within {timeout:g} s")
    return result[0]


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is fields[0]; utime and stime are stat fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status: VmRSS, VmHWM, Threads (count) ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def machine() -> str:
    import platform

    import requests
    import urllib3
    import watchdog.version

    return (
        f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"requests {requests.__version__}, urllib3 {urllib3.__version__}, "
        f"watchdog {watchdog.version.VERSION_STRING}"
    )


def wait_quiet(
    pid: int, timeout: float = 30.0, window: float = 0.5, max_cpu: float = 0.02
) -> float:
    """Wait until process `pid` used at most `max_cpu` CPU seconds over one `window` (its
    start-up has settled); returns the wall-clock time when it was found quiet."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while True:
        time.sleep(window)  # one measuring window, bounded by the deadline below
        current = cpu_seconds(pid)
        if current - last <= max_cpu:
            return time.time()
        last = current
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still busy after {timeout:g} s")


def _machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICK


def _own_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class Background:
    """How much CPU the rest of the machine used while a benchmark ran: the machine's busy time
    minus this process and its reaped children. A benchmark is only as good as a quiet machine;
    this says whether it was one."""

    def __init__(self) -> None:
        self._busy = _machine_busy_seconds()
        self._own = _own_seconds()
        self._wall = time.monotonic()

    def report(self) -> str:
        other = max(0.0, _machine_busy_seconds() - self._busy - (_own_seconds() - self._own))
        wall = time.monotonic() - self._wall
        cores = os.cpu_count() or 1
        return (
            f"other processes on the machine used {other:.1f} CPU-s during the {wall:.0f} s run "
            f"({100 * other / (wall * cores):.1f} % of {cores} cores; near 0 = a quiet machine)"
        )
