"""Peak memory of uploading one file, streaming (ingestd's targets) against the naive baselines.

Usage: python bench/memory.py [--runs 3] [--sizes 100000,20000000]

The parent starts the sandbox EHR in a thread and writes the test files. Each measurement runs in
a fresh `--measure` process whose only child (`--child`) does one upload and exits; the measurer
then reads getrusage(RUSAGE_CHILDREN).ru_maxrss, which is that one child's peak RSS. Reported:
medians over the runs, and the growth from the smallest file to each larger one.

Baselines: for Leyr, the API guide's own snippet (the whole file read, base64-encoded and sent
with `json=`); for Nymbl, requests' `files=` (the whole multipart body built in memory); for FHIR
(issue 17), the file read whole and posted as a Binary, then the DocumentReference naming it —
ingestd's FHIR target sends a file that large as a Binary too, streamed.
`--apis fhir` measures one API only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
PATIENT = {
    "leyr": "se_personal_number:191212121212",
    "nymbl": "12345",
    "fhir": "urn:oid:1.2.752.129.2.1.3.1|191212121212",
}
METHODS = ("ingestd", "baseline")
GOAL_MB = 5.0


def child(args: argparse.Namespace) -> None:
    """One upload, nothing else; imports come first so they weigh the same for every size."""
    import base64

    import requests

    from ingestd.sandbox import SANDBOX_CREDENTIALS
    from ingestd.targets.base import Upload
    from ingestd.targets.fhir import FhirTarget
    from ingestd.targets.leyr import LeyrTarget
    from ingestd.targets.nymbl import NymblTarget

    path = Path(args.file)
    creds = SANDBOX_CREDENTIALS[args.api]
    patient = PATIENT[args.api]
    if args.method == "ingestd":
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(65536):
                digest.update(chunk)
        fd = os.open(path, os.O_RDONLY)
        upload = Upload(
            patient_id=patient,
            file_name=path.name,
            mime="application/pdf",
            size=os.fstat(fd).st_size,
            known_sha256=digest.hexdigest(),
            title="Benchmark",
            doc_type="Scan",
            fd=fd,
            key="bench",
        )
        target: LeyrTarget | NymblTarget | FhirTarget
        if args.api == "fhir":
            target = FhirTarget("fhir", base_url=args.base_url, bearer_token=creds["bearer_token"])
        elif args.api == "leyr":
            target = LeyrTarget(
                "leyr",
                base_url=args.base_url,
                emr=creds["emr"],
                care_unit_id=creds["care_unit_id"],
                client_id=creds["client_id"],
                client_secret=creds["client_secret"],
            )
        else:
            target = NymblTarget(
                "nymbl",
                base_url=args.base_url,
                token_url=args.token_url,
                api_key=creds["api_key"],
                client_id=creds["client_id"],
                client_secret=creds["client_secret"],
            )
        target.send(upload)
        target.close()
        os.close(fd)
        return
    if args.api == "fhir":
        fhir_baseline(args.base_url, path, creds["bearer_token"])
        return
    if args.api == "leyr":
        # The guide's snippet, as written there.
        with path.open("rb") as file:
            file_content = file.read()
        base64_content = base64.b64encode(file_content).decode("utf-8")
        document_data = {
            "content": base64_content,
            "format": "application/pdf",
            "title": "Benchmark",
            "type": "Scan",
        }
        headers = {
            "x-leyr-client-id": creds["client_id"],
            "x-leyr-client-secret": creds["client_secret"],
            "Content-Type": "application/json",
        }
        url = (
            f"{args.base_url}/emrs/{creds['emr']}/care-units/{creds['care_unit_id']}"
            f"/patients/{patient}/documents"
        )
        response = requests.post(url, headers=headers, json=document_data, timeout=60)
    else:
        token = requests.post(
            args.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": creds["client_id"],
                "client_secret": creds["client_secret"],
            },
            timeout=60,
        ).json()["access_token"]
        with path.open("rb") as f:
            response = requests.post(
                f"{args.base_url}/Patients({patient})/Documents",
                headers={"Authorization": f"Bearer {token}", "x-api-key": creds["api_key"]},
                files={"file": (path.name, f, "application/pdf")},
                data={"document_type": "Scan", "description": "Benchmark"},
                timeout=60,
            )
    response.raise_for_status()


def fhir_baseline(base_url: str, path: Path, bearer: str) -> None:
    """The plain way: the file read whole, posted as a Binary, then the DocumentReference."""
    import requests

    auth = {"Authorization": f"Bearer {bearer}"}
    data = path.read_bytes()
    binary = requests.post(
        f"{base_url}/Binary",
        data=data,
        headers={**auth, "Content-Type": "application/pdf"},
        timeout=60,
    )
    binary.raise_for_status()
    patients = requests.get(
        f"{base_url}/Patient", params={"identifier": PATIENT["fhir"]}, headers=auth, timeout=60
    ).json()
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": f"Patient/{patients['entry'][0]['resource']['id']}"},
        "content": [
            {"attachment": {"contentType": "application/pdf", "url": binary.headers["Location"]}}
        ],
    }
    response = requests.post(
        f"{base_url}/DocumentReference",
        json=document,
        headers={**auth, "Content-Type": "application/fhir+json"},
        timeout=60,
    )
    response.raise_for_status()


def measure(child_argv: list[str]) -> None:
    """Run one child and print its peak RSS in KiB: this process has no other child."""
    subprocess.run([sys.executable, str(HERE), "--child", *child_argv], check=True)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def peak_kib(child_argv: list[str]) -> int:
    out = subprocess.run(
        [sys.executable, str(HERE), "--measure", *child_argv],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def parent(args: argparse.Namespace) -> None:
    from ingestd.sandbox import Sandbox

    sizes = sorted(int(s) for s in args.sizes.split(","))
    sb = Sandbox(port=0).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ingestd-bench-") as tmp:
            files = {}
            for size in sizes:
                path = Path(tmp) / f"file-{size}.pdf"
                with path.open("wb") as f:
                    f.write(b"%PDF-1.7\n")
                    f.write(os.urandom(size - 9))
                files[size] = path
            rows = []
            for api in args.apis.split(","):
                base_url = {
                    "leyr": sb.leyr_base_url,
                    "nymbl": sb.nymbl_base_url,
                    "fhir": sb.fhir_base_url,
                }[api]
                for method in METHODS:
                    medians = {}
                    for size in sizes:
                        argv = [
                            f"--api={api}",
                            f"--method={method}",
                            f"--file={files[size]}",
                            f"--base-url={base_url}",
                            f"--token-url={sb.nymbl_token_url}",
                        ]
                        runs = [peak_kib(argv) / 1024 for _ in range(args.runs)]
                        medians[size] = statistics.median(runs)
                    rows.append((api, method, medians))
    finally:
        sb.stop()
    report(rows, sizes, args.runs)


def report(rows: list[tuple[str, str, dict[int, float]]], sizes: list[int], runs: int) -> None:
    smallest = sizes[0]
    print(f"Peak RSS of one upload, median of {runs} runs (MB = MiB)")
    print()
    print("| api | method | bytes | peak RSS MB | delta vs smallest MB | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    verdicts = []
    for api, method, medians in rows:
        for size in sizes:
            delta = round(medians[size] - medians[smallest], 1) + 0.0  # no "-0.0"
            grown = (size - smallest) / (1024 * 1024)
            ratio = f"{delta / grown:.2f}" if size != smallest else "-"
            print(f"| {api} | {method} | {size:,} | {medians[size]:.1f} | {delta:+.1f} | {ratio} |")
        if method == "ingestd":
            delta = round(medians[sizes[-1]] - medians[smallest], 1) + 0.0
            verdict = "meets" if delta <= GOAL_MB else "MISSES"
            verdicts.append(f"{api}: {delta:+.1f} MB, {verdict} the goal of <= {GOAL_MB:g} MB")
    print()
    print("ratio: MB of extra peak RSS per MB of extra file size.")
    for line in verdicts:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", choices=("leyr", "nymbl", "fhir"))
    parser.add_argument("--apis", default="leyr,nymbl,fhir")
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--file")
    parser.add_argument("--base-url")
    parser.add_argument("--token-url")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="100000,20000000")
    args, _ = parser.parse_known_args()
    if args.child:
        child(args)
    elif args.measure:
        measure([a for a in sys.argv[1:] if a != "--measure"])
    else:
        parent(args)


if __name__ == "__main__":
    main()
