"""`ingestd verify`: prove, receipt by receipt, that the EHR holds what done/ says it does.

Selects done/ receipts (all, or `PATH…` files, receipts or folders in done/, narrowed by
`--since` and `--target`), checks each (delivery/verifying.py), and prints a table and a summary
or, with `--json`, one object. The table shows receipts by their path in done/ (the operator's own
files, on the operator's terminal); the log names them only by keyed hashes.

Exit: 0 every receipt holds; 1 some document missing, different or under another patient; 3 none
found bad but some could not be checked (the EHR not answering, credentials refused, a receipt
that names no document): run it again later; 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingestd.commands.common import EXIT_FAILED, EXIT_OK, UsageError, as_state_owner, load, warn
from ingestd.config.model import Config
from ingestd.delivery.verifying import (
    BAD,
    OUTCOMES,
    UNVERIFIED,
    Checked,
    Claim,
    Verifier,
    claim_of,
    receipts_in,
)
from ingestd.filing.receipts import SUFFIX
from ingestd.journal import open_journal
from ingestd.observe.logs import load_masker, setup
from ingestd.targets import make_target

EXIT_UNVERIFIED = 3

_LABELS = {
    "ok": "hold",
    "skipped": "verified earlier (skipped; --again re-checks)",
    "missing": "missing",
    "different": "different content",
    "other_patient": "under another patient",
    "unverified": "not verified (no answer from the EHR, or not askable: run verify again)",
}


def parse_since(value: str) -> datetime:
    """`2026-01-31` or an ISO 8601 time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {value}: expected a date (YYYY-MM-DD) or ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def done_receipts(config: Config, paths: list[str]) -> Iterator[Path]:
    """Receipts in done/: every one, or those of the files, receipts and folders given."""
    root = config.paths.done.resolve()
    if not paths:
        yield from receipts_in(root)
        return
    for raw in paths:
        path = Path(os.path.abspath(raw)).resolve()
        if path != root and root not in path.parents:
            raise UsageError(f"{raw}: not in {config.paths.done}")
        if path.is_dir():
            yield from receipts_in(path)
            continue
        if not path.name.endswith(SUFFIX):
            path = path.with_name(path.name + SUFFIX)
        if not path.is_file():
            raise UsageError(f"{raw}: not a done file with a receipt in {config.paths.done}")
        yield path


def _selected(item: Claim | Checked, since: datetime | None, target: str | None) -> bool:
    if target is not None and item.target != target:
        return False
    if since is None:
        return True
    finished = item.finished_at if isinstance(item, Claim) else None
    if not finished:
        return False
    try:
        when = parse_since(finished)
    except UsageError:
        return False
    return when >= since


def select(config: Config, args: argparse.Namespace) -> list[Claim | Checked]:
    if args.target is not None and args.target not in config.targets:
        raise UsageError(f"--target {args.target}: no such target in the config")
    since = parse_since(args.since) if args.since else None
    root = config.paths.done.resolve()
    items = [claim_of(root, path) for path in dict.fromkeys(done_receipts(config, args.paths))]
    return [item for item in items if _selected(item, since, args.target)]


def summary(results: list[Checked]) -> dict[str, int]:
    counts = Counter(r.outcome for r in results)
    return {"receipts": len(results), **{outcome: counts[outcome] for outcome in OUTCOMES}}


def exit_code(results: list[Checked]) -> int:
    outcomes = {r.outcome for r in results}
    if outcomes & BAD:
        return EXIT_FAILED
    return EXIT_UNVERIFIED if UNVERIFIED in outcomes else EXIT_OK


def render_table(results: list[Checked]) -> str:
    rows = [("STATUS", "TARGET", "RECEIPT (in done/)", "DETAIL")]
    rows += [(r.outcome, r.target or "-", str(r.receipt), r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def render_summary(results: list[Checked]) -> str:
    counts = summary(results)
    parts = [f"{counts[o]} {_LABELS[o]}" for o in OUTCOMES if counts[o]]
    return f"{counts['receipts']} receipt(s): " + ("; ".join(parts) if parts else "none selected")


def as_json(results: list[Checked]) -> dict[str, Any]:
    return {
        "summary": summary(results),
        "receipts": [
            {
                "receipt": str(r.receipt),
                "target": r.target,
                "document_id": r.document_id,
                "status": r.outcome,
                "detail": r.detail,
                "verified_at": r.verified_at,
            }
            for r in results
        ],
    }


def run_verify(args: argparse.Namespace) -> int:
    setup(args.log_level)
    config = load(args)
    warn(config)
    as_state_owner(config)
    selected = select(config, args)
    wanted = {item.target for item in selected if isinstance(item, Claim)}
    targets = {name: make_target(config.targets[name]) for name in wanted if name in config.targets}
    journal = open_journal(config.paths.state, config.journal)
    try:
        verifier = Verifier(
            targets=targets,
            concurrency={n: config.targets[n].common.concurrency for n in targets},
            journal=journal,
            masker=load_masker(config.paths.state.parent),
            again=args.again,
        )
        results = verifier.run(selected)
    finally:
        journal.close()
        for target in targets.values():
            target.close()
    if args.json:
        print(json.dumps(as_json(results), indent=2))
    else:
        if results:
            print(render_table(results))
        print(render_summary(results))
    return exit_code(results)
