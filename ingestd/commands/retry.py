"""`ingestd retry`: failed files back in line, their earlier receipts kept for the next one.

A retried file goes back to its original inbox path (never over another file) and its receipt
leaves failed/; the receipt (and any history it had) waits in the journal, keyed by path and
content, and travels in the `history` of the file's next receipt. Order, for a crash at any
point: history first, then the file, then the old receipt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd import content
from ingestd.commands.common import EXIT_OK, UsageError, as_state_owner, load
from ingestd.config.model import Config
from ingestd.filing.places import free_name, place
from ingestd.filing.receipts import SUFFIX, Receipt
from ingestd.journal import JournalLike, open_journal


class RetryError(Exception):
    """A path given to retry that is not a failed file."""


@dataclass(frozen=True)
class Retried:
    failed: PurePosixPath  # where it was, relative to failed/
    inbox: PurePosixPath  # where it is now, relative to the inbox


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


def retry_one(config: Config, journal: JournalLike, receipt_file: Path) -> Retried | None:
    """Put one failed file back; None when its file is already gone (the receipt is removed)."""
    receipt = Receipt.read(receipt_file)
    stored = receipt_file.with_name(receipt_file.name[: -len(SUFFIX)])
    if not os.path.lexists(stored):
        receipt_file.unlink()
        return None
    source = PurePosixPath(receipt.source)
    history = [*receipt.history, dataclasses.replace(receipt, history=[]).to_dict()]
    inbox = config.paths.inbox
    folder = inbox / source.parent
    name = source.name if not os.path.lexists(inbox / source) else free_name(folder, source.name)
    back = source.parent / name
    journal.keep_for_retry(back, _sha256(stored) or receipt.sha256 or "", history)
    place(stored, inbox / back)
    with contextlib.suppress(FileNotFoundError):
        receipt_file.unlink()
    where = PurePosixPath(receipt_file.relative_to(config.paths.failed).parent) / stored.name
    return Retried(where, back)


def _sha256(path: Path) -> str | None:
    """The content hash the pipeline will compute, so the history finds the file again."""
    try:
        fd, _ = content.open_regular(path)
    except (OSError, content.UnsafeFile):
        return None
    try:
        return content.sha256_of(fd)[0]
    finally:
        os.close(fd)


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
