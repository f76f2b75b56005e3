"""Baseline upload clients for the benchmarks, each run as its own process by bench/common.py.

Not run by hand: `python bench/clients.py MODE --base-url URL [--list FILE] [--concurrency N]`.

Modes (all post Leyr JSON with base64 content to the sandbox, the headers ingestd sends):

- `raw`: the ceiling. A keep-alive `requests.Session`, N threads, each reading a file, encoding
  it and posting the body; nothing else (no hashing, no journal, no filing).
- `snippet`: what an admin would script: the Leyr guide's own Python snippet ("Attach a
  Document": read the file, base64, `requests.post(json=...)`, `response.json()`), in a
  sequential loop over the files.
- `follow`: a keep-alive client that uploads each `PATIENT<TAB>PATH` line read from stdin at
  once (the latency floor: no detection, no settling).

`raw` and `snippet` read `--list` (lines `PATIENT<TAB>PATH`), print `ready`, wait for `go` on
stdin, upload, print a summary line and exit non-zero if any upload failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import sys
import threading
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter


def leyr_headers() -> dict[str, str]:
    from ingestd.sandbox import SANDBOX_CREDENTIALS

    creds = SANDBOX_CREDENTIALS["leyr"]
    return {
        "x-leyr-client-id": creds["client_id"],
        "x-leyr-client-secret": os.environ.get("BENCH_LEYR_SECRET", creds["client_secret"]),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def documents_url(base_url: str, patient: str) -> str:
    from ingestd.sandbox import SANDBOX_CREDENTIALS

    creds = SANDBOX_CREDENTIALS["leyr"]
    return (
        f"{base_url}/emrs/{creds['emr']}/care-units/{creds['care_unit_id']}"
        f"/patients/{patient}/documents"
    )


def read_list(path: str) -> list[tuple[str, str]]:
    items = []
    for line in Path(path).read_text().splitlines():
        patient, _, file_path = line.partition("\t")
        items.append((patient, file_path))
    return items


def wait_go() -> None:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        sys.exit(f"expected go, got {line!r}")


def json_body(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return json.dumps(
        {
            "content": base64.b64encode(data).decode("ascii"),
            "format": "application/pdf",
            "title": Path(path).stem,
            "type": "Scan",
        }
    ).encode("ascii")


def keepalive_session(concurrency: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.headers.update(leyr_headers())
    return session


def raw(args: argparse.Namespace) -> int:
    items = read_list(args.list)
    session = keepalive_session(args.concurrency)
    lock = threading.Lock()
    queue = iter(items)
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            patient, path = item
            try:
                response = session.post(
                    documents_url(args.base_url, patient), data=json_body(path), timeout=60
                )
                if response.status_code != 201:
                    errors.append(f"HTTP {response.status_code}")
            except requests.RequestException as exc:
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    wait_go()
    began = time.monotonic()
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    cpu = time.process_time() - cpu
    print(
        f"ok {len(items) - len(errors)} errors {len(errors)} elapsed {elapsed:.3f} cpu {cpu:.3f}",
        flush=True,
    )
    return 1 if errors else 0


def snippet(args: argparse.Namespace) -> int:
    """The Leyr guide's snippet, as written there, in a loop (no session: one connection per
    request, as `requests.post` does)."""
    items = read_list(args.list)
    headers = {k: v for k, v in leyr_headers().items() if k != "Accept"}
    failures = 0
    wait_go()
    began = time.monotonic()
    for patient, file_path in items:
        with open(file_path, "rb") as file:
            file_content = file.read()
        base64_content = base64.b64encode(file_content).decode("utf-8")
        file_format, _ = mimetypes.guess_type(file_path)
        document_data = {
            "content": base64_content,
            "format": file_format,
            "title": Path(file_path).stem,
            "type": "Scan",
        }
        response = requests.post(
            documents_url(args.base_url, patient), headers=headers, json=document_data
        )
        document = response.json()
        if response.status_code != 201 or "id" not in document:
            failures += 1
    elapsed = time.monotonic() - began
    print(f"ok {len(items) - failures} errors {failures} elapsed {elapsed:.3f}", flush=True)
    return 1 if failures else 0


def follow(args: argparse.Namespace) -> int:
    session = keepalive_session(1)
    failures = 0
    print("ready", flush=True)
    for line in sys.stdin:
        patient, _, path = line.rstrip("\n").partition("\t")
        response = session.post(documents_url(args.base_url, patient), data=json_body(path))
        if response.status_code != 201:
            failures += 1
    print(f"errors {failures}", flush=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("raw", "snippet", "follow"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--list")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    return {"raw": raw, "snippet": snippet, "follow": follow}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
