"""The PDF a claimed file is sent as: made once, kept in the state folder until the file is
finished.

    convert → write `<state folder>/converted/.<row>.pdf.tmp` → fsync → rename to `<row>.pdf`
    → fsync the folder → commit its format, SHA-256, size and pages to the journal → send

Everything before the first send is committed, so after a crash the upload resumes with the
same bytes and the look-up for an earlier upload compares the same hash. A PDF lost with the
state folder is made again: the conversion is deterministic, so it comes out byte-identical.
The PDF lives in the state folder, never in the inbox (no scan sees it, no share holds it), and
is removed once its row is done or failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingestd import content
from ingestd.delivery.decide import Rejected
from ingestd.delivery.topdf import ConversionFailed, Converted, convert
from ingestd.filing.receipts import fsync_dir
from ingestd.journal import ACTIVE_STATES, JournalLike, Row
from ingestd.observe.logs import Masker, event
from ingestd.observe.metrics import Metrics
from ingestd.rules.conversion import CONVERTIBLE, PDF, unconvertible

log = logging.getLogger("ingestd.pipeline")

FOLDER = "converted"
FILE_MODE = 0o600  # a document: for ingestd's user only


@dataclass(frozen=True)
class StagedPdf:
    """The PDF to send, open for reading; the caller closes `fd`."""

    fd: int
    sha256: str
    size: int


class Stager:
    def __init__(
        self, folder: Callable[[], Path], journal: JournalLike, masker: Masker, metrics: Metrics
    ) -> None:
        self._folder = folder  # the state folder (the journal's)
        self.journal = journal
        self.masker = masker
        self.metrics = metrics

    def path(self, row: Row) -> Path:
        return self._folder() / FOLDER / f"{row.id}.pdf"

    def prepare(self, row: Row, fd: int, size: int, fmt: str) -> tuple[Row, StagedPdf]:
        """The PDF of the claimed file open on `fd` (`size` bytes of format `fmt`), made now
        unless the journal already holds it; Rejected (conversion_failed) when it cannot be."""
        if row.converted_sha256 is not None:
            kept = self._open_kept(row)
            if kept is not None:
                return row, kept
        if fmt not in CONVERTIBLE:
            raise Rejected("conversion_failed", f"{unconvertible(fmt)}: change the rule")
        made = self._make(row, fd, size)
        if row.converted_sha256 not in (None, made.sha256):
            # Only when the kept PDF was lost and the converter changed since (an upgrade):
            # an earlier send of the old bytes would not be found by the look-up.
            event(log, logging.WARNING, "converted_file_differs", file=self.masker.path(row.source))
        row = self.journal.change(
            row,
            converted_format=PDF,
            converted_sha256=made.sha256,
            converted_size=made.size,
            converted_pages=made.pages,
        )
        opened = self._open_kept(row)
        if opened is None:
            raise OSError(f"the converted file of row {row.id} vanished")
        return row, opened

    def _make(self, row: Row, fd: int, size: int) -> Converted:
        final = self.path(row)
        tmp = final.with_name(f".{final.name}.tmp")
        started = time.monotonic()
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left by a crash mid-conversion
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(out_fd, "wb") as out:
                made = convert(fd, size, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)  # our own file: a PDF an earlier crash left is replaced
        except ConversionFailed as exc:
            self.metrics.converted("failed", time.monotonic() - started)
            raise Rejected("conversion_failed", exc.message) from None
        except OSError as exc:
            event(
                log,
                logging.ERROR,
                "conversion_io_error",
                file=self.masker.path(row.source),
                reason=exc.strerror or type(exc).__name__,
                action="check free space and permissions of the state folder (and that the "
                "inbox answers); the file waits claimed and is converted when it works",
            )
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(final.parent)
        seconds = time.monotonic() - started
        self.metrics.converted("done", seconds, made.pages)
        event(
            log,
            logging.INFO,
            "file_converted",
            file=self.masker.path(row.source),
            pages=made.pages,
            size=made.size,
            seconds=round(seconds, 3),
        )
        return made

    def _open_kept(self, row: Row) -> StagedPdf | None:
        """The kept PDF if it is there and is what the journal says; None otherwise."""
        try:
            fd, st = content.open_regular(self.path(row))
        except (OSError, content.UnsafeFile):
            return None
        sha256 = content.StreamedDigest(fd).hexdigest()
        if st.st_size != row.converted_size or sha256 != row.converted_sha256:
            os.close(fd)
            return None
        return StagedPdf(fd, sha256, st.st_size)

    def remove(self, row: Row) -> None:
        """Remove a finished row's PDF (nothing when it has none)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(row))

    def sweep(self) -> None:
        """Remove the PDFs of rows no longer active (finished, or gone, before a crash let
        `remove` run)."""
        folder = self._folder() / FOLDER
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            stem = name.removesuffix(".pdf")
            row = self.journal.get(int(stem)) if stem.isdigit() else None
            if row is None or row.state not in ACTIVE_STATES:
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
