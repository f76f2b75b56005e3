"""`ingestd retry`: failed files back in line, their earlier receipts kept for the next one.

Which receipts a command line selects; the putting back itself (and its crash-safe order) is
`ingestd.filing.putback.retry_one`, which the status page's Retry button calls too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from ingestd.commands.common import EXIT_OK, UsageError, as_state_owner, load
from ingestd.config.model import Config
from ingestd.filing.putback import retry_one
from ingestd.filing.receipts import SUFFIX
from ingestd.journal import open_journal


class RetryError(Exception):
    """A path given to retry that is not a failed file."""


def failed_receipts(
    config: Config, paths: list[str], patients: list[str], everything: bool
) -> Iterator[Path]:
    """The receipts selected by paths (failed files or their receipts), patient folders, or all."""
    root = config.paths.failed
    if everything:
        yield from sorted(root.rglob("*" + SUFFIX))
        return
    for folder in patients:
        base = root / folder
        if not base.is_dir() or root not in base.resolve().parents:
            raise RetryError(f"{folder}: no such patient folder in {root}")
        yield from sorted(base.rglob("*" + SUFFIX))
    for raw in paths:
        path = Path(os.path.abspath(raw))
        if not path.name.endswith(SUFFIX):
            path = path.with_name(path.name + SUFFIX)
        if root.resolve() not in path.resolve().parents or not path.is_file():
            raise RetryError(f"{raw}: not a failed file with a receipt in {root}")
        yield path


def run_retry(args: argparse.Namespace) -> int:
    if not (args.paths or args.patient or args.all):
        raise UsageError("name failed files, --patient FOLDER or --all")
    config = load(args, in_service=False)
    as_state_owner(config)
    journal = open_journal(config.paths.state, config.journal)
    try:
        selected = list(failed_receipts(config, args.paths, args.patient or [], args.all))
        back = [retry_one(config, journal, receipt) for receipt in selected]
    except RetryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        journal.close()
    for item in back:
        if item is not None:
            print(f"failed/{item.failed} -> inbox/{item.inbox}")
    print(f"{sum(1 for item in back if item is not None)} file(s) back in the inbox")
    return EXIT_OK
