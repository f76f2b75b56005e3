"""A failed file put back in the inbox: what `ingestd retry` and the status page's Retry button
both do, through this one function.

The file goes back to its original inbox path (never over another file) and its receipt leaves
failed/; the receipt (and any history it had) waits in the journal, keyed by path and content,
and travels in the `history` of the file's next receipt. Order, for a crash at any point:
history first, then the file, then the old receipt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd import content
from ingestd.config.model import Config
from ingestd.filing.places import free_name, place
from ingestd.filing.receipts import SUFFIX, Receipt
from ingestd.journal import JournalLike


@dataclass(frozen=True)
class Retried:
    failed: PurePosixPath  # where it was, relative to failed/
    inbox: PurePosixPath  # where it is now, relative to the inbox


def retry_one(
    config: Config, journal: JournalLike, receipt_file: Path, wait: bool = True
) -> Retried | None:
    """Put one failed file back; None when its file is already gone (the receipt is removed).
    `wait` False: a shared journal that does not answer raises JournalUnavailable at once,
    before anything moves, instead of waiting through the outage."""
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
    journal.keep_for_retry(back, _sha256(stored) or receipt.sha256 or "", history, wait=wait)
    place(stored, inbox / back, watched=True)
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
