"""The filer: a finished row's file moved to done/ or failed/ with its receipt beside it.

Every step is recorded in the journal before it is taken (the destination name comes with the
outcome), so `finish` can be repeated after a crash anywhere and never overwrites anything. A
folder that cannot be written (full disk, read-only, gone) keeps the file claimed; the trouble
is logged once per spell, per folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.clock import utc_iso
from ingestd.filing.moves import NO_LINK_ERRNOS, copy_exclusive, copy_tag
from ingestd.filing.places import free_name, place
from ingestd.filing.receipts import Receipt, read_receipt, receipt_path, write_receipt
from ingestd.journal import JournalLike, Row
from ingestd.observe.logs import Masker, event

log = logging.getLogger("ingestd.pipeline")

MAX_NAME_TRIES = 100


class Filer:
    def __init__(
        self,
        inbox: Callable[[], Path],
        roots: Callable[[], tuple[Path, Path]],  # (done, failed)
        journal: JournalLike,
        masker: Masker,
        instance: str = "",  # this instance's id: names its hidden copies (moves.copy_tag)
    ) -> None:
        self._inbox = inbox
        self._instance = instance
        self._roots = roots
        self.journal = journal
        self.masker = masker
        # Destination folders that failed: logged once per spell of trouble, under _lock.
        self._trouble: set[PurePosixPath] = set()
        # Names chosen for rows not yet finished, by folder ("done/p1"), with the row holding
        # each, under _lock: a name is chosen before the file moves, and two files of one name
        # finishing at once (the same fax sent twice during an outage) must not both be given it.
        self._chosen: dict[PurePosixPath, dict[str, int]] = {}
        self._lock = threading.Lock()

    def destination(self, row: Row, status: str) -> dict[str, Any]:
        """Journal columns naming where the file is filed: chosen with the outcome it is
        recorded with, so filing needs no journal write of its own before the move."""
        if row.dest is not None:
            return {}
        parent = row.source.parent
        dest = self._choose(status, parent, row.source.name, row.id)
        return {"dest": dest, "finished_at": utc_iso()}

    def _choose(self, status: str, parent: PurePosixPath, name: str, row_id: int) -> PurePosixPath:
        """A free name in `parent` of the status's folder, held for the row until `_release`."""
        key = PurePosixPath(status) / parent
        while True:
            with self._lock:
                taken = set(self._chosen.get(key, ()))
            # Looked up without the lock: a share that hangs must not stop every worker's filing.
            free = free_name(self._root(status) / parent, name, taken)
            with self._lock:
                chosen = self._chosen.setdefault(key, {})
                if free not in chosen:  # else another worker took it meanwhile: look again
                    chosen[free] = row_id
                    return parent / free

    def hold_recorded(self, rows: list[Row]) -> None:
        """Hold the names recorded for rows found at start-up or taken over, before any new
        row chooses one (their files may not be in place yet)."""
        for row in rows:
            if row.dest is not None and row.state in ("uploaded", "rejected"):
                self._hold("done" if row.state == "uploaded" else "failed", row.dest, row.id)

    def _hold(self, status: str, dest: PurePosixPath, row_id: int) -> None:
        """Hold a name chosen before a restart (its row is being finished now)."""
        with self._lock:
            self._chosen.setdefault(PurePosixPath(status) / dest.parent, {})[dest.name] = row_id

    def forget(self, row_id: int) -> None:
        """Let go of the names held for a row this instance no longer holds (taken over by a
        survivor of the fleet, which chooses again if it must)."""
        with self._lock:
            for folder, chosen in list(self._chosen.items()):
                for name in [name for name, holder in chosen.items() if holder == row_id]:
                    del chosen[name]
                if not chosen:
                    del self._chosen[folder]

    def _release(self, status: str, dest: PurePosixPath | None) -> None:
        if dest is None:
            return
        folder = PurePosixPath(status) / dest.parent
        with self._lock:
            chosen = self._chosen.get(folder)
            if chosen is not None:
                chosen.pop(dest.name, None)
                if not chosen:
                    del self._chosen[folder]

    def finish(self, row: Row) -> str | None:
        """File the row away and mark it done/failed; the status, or None when the folder
        cannot be written now (the row stays, to be finished later)."""
        status = "done" if row.state == "uploaded" else "failed"
        folder = PurePosixPath(status) / row.source.parent
        if row.dest is not None:
            self._hold(status, row.dest, row.id)
        try:
            row = self._file_away(row, status)
        except OSError as exc:
            with self._lock:
                starting = folder not in self._trouble
                self._trouble.add(folder)
            if starting:
                event(
                    log,
                    logging.ERROR,
                    "filing_failed",
                    folder=self.masker.path(folder),
                    reason=exc.strerror or type(exc).__name__,
                    action="check free space, permissions and the folder; files stay claimed "
                    "and are filed when it works again",
                )
            return None
        with self._lock:
            recovered = folder in self._trouble
            self._trouble.discard(folder)
        if recovered:
            event(log, logging.INFO, "filing_recovered", folder=self.masker.path(folder))
        self.journal.finished(row.id, status)
        self._release(status, row.dest)
        error = row.error or {}
        event(
            log,
            logging.INFO if status == "done" else logging.WARNING,
            f"file_{status}",
            file=self.masker.path(row.source),
            patient=self.masker.patient(row.patient_id) if row.patient_id else None,
            target=(row.decision or {}).get("target"),
            attempts=row.attempts,
            kind=error.get("kind"),
            http_status=error.get("http_status"),
        )
        return status

    def _file_away(self, row: Row, status: str) -> Row:
        """Place the work file under a free name and write the receipt beside it; every step
        is recorded first, so a crash anywhere repeats it without overwriting anything."""
        root = self._root(status)
        work = self._inbox() / row.work
        for _ in range(MAX_NAME_TRIES):
            if row.dest is None:
                row = self.journal.change(row, **self.destination(row, status))
            assert row.dest is not None
            dest = root / row.dest
            if os.path.lexists(work):
                try:
                    # The receipt's write syncs the folder for both names.
                    place(work, dest, sync=False, tag=copy_tag(self._instance, row.work))
                except FileExistsError:
                    if not _same_file(work, dest):
                        others = self._name_holders(row)
                        if others:
                            # Another instance of a fleet chose this name at the same moment:
                            # what is there is its file (maybe still being copied), never
                            # touched — unless it is a whole copy of ours and every other's
                            # bytes differ (ours, left by a crash before the work file went).
                            known = [o.sha256 for o in others]
                            if (
                                row.sha256 is None
                                or None in known
                                or row.sha256 in known
                                or not _our_copy(work, dest, row.sha256)
                            ):
                                row = self._choose_again(row, status)
                                continue
                        elif _cut_short(work, dest):
                            # A copy (no hard links on this share) that a crash cut short.
                            os.unlink(dest)
                            continue
                        elif not _our_copy(work, dest, row.sha256):
                            # The name was taken since it was chosen (by hand).
                            row = self._choose_again(row, status)
                            continue
                    # An earlier try put it there but could not remove the work file.
                    os.unlink(work)
            elif not os.path.lexists(dest):
                # Filed before a crash (or before a shared journal wrote its end) and taken
                # away since: `ingestd retry` put a failed file back, or someone moved it. A
                # receipt now would stand beside nothing: the row only ends.
                event(
                    log,
                    logging.WARNING,
                    "filed_file_gone",
                    file=self.masker.path(row.source),
                    action="nothing to do if it was put back to be tried again; otherwise look "
                    "for it: the journal records where it was filed",
                )
                return row
            try:
                receipt = Receipt.of_row(row, status, dest.name)
                write_receipt(receipt_path(dest), receipt.to_dict())
            except FileExistsError:
                if not os.path.lexists(work) and _written_by_this_filing(dest, receipt):
                    # Finishing again after a crash, maybe on another host of a fleet, whose
                    # user database may name the file's owner differently: the file and its
                    # receipt are already in place.
                    return row
                # Someone put a different receipt there by hand: keep ours beside it.
                row = self._move_aside(row, status, dest)
                continue
            return row
        raise OSError(errno.EEXIST, "no free name in the folder")

    def _root(self, status: str) -> Path:
        done, failed = self._roots()
        return done if status == "done" else failed

    def _name_holders(self, row: Row) -> list[Row]:
        """The other unfinished rows that record this row's name. Two instances of a fleet can
        choose one name at the same moment (the same fax sent twice, identical bytes): the
        file found there is then another's, moved in before its receipt was written (or still
        being copied), and must not pass for a copy of this row's own. Every row records its
        name before its file moves, so the other's is in the journal by then."""
        assert row.dest is not None
        return self.journal.name_holders(row.id, row.state, row.dest)

    def _choose_again(self, row: Row, status: str) -> Row:
        """Forget the row's name (taken since it was chosen): the next try chooses another."""
        changed = self.journal.change(row, dest=None)
        self._release(status, row.dest)
        return changed

    def _move_aside(self, row: Row, status: str, dest: Path) -> Row:
        """Our file is in place but another receipt stands beside it: the file moves to a
        free name of its own. Linked (or, without hard links, copied) there before the new
        name is recorded and the old one removed after, so a crash in between leaves at worst
        a second name for the file, never a file whose recorded name is gone (it would end
        without a receipt)."""
        assert row.dest is not None
        for _ in range(MAX_NAME_TRIES):
            chosen = self._choose(status, row.dest.parent, row.source.name, row.id)
            aside = dest.parent / chosen.name
            try:
                _link_or_copy(dest, aside)
            except FileExistsError:
                self._release(status, chosen)  # taken since it was looked up: look again
                continue
            except FileNotFoundError:
                # Gone meanwhile: the next try finds out what became of it.
                self._release(status, chosen)
                return row
            try:
                changed = self.journal.change(row, dest=chosen)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
                self._release(status, chosen)
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            self._release(status, row.dest)
            return changed
        raise OSError(errno.EEXIST, "no free name in the folder")


def _link_or_copy(src: Path, dest: Path) -> None:
    """A second name for `src` (a hard link), or a copy of it where the share has none; never
    over another file (FileExistsError)."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in NO_LINK_ERRNOS:
            raise
        copy_exclusive(src, dest)


def _same_file(work: Path, dest: Path) -> bool:
    """Whether `dest` is `work` itself (a hard link an interrupted move left)."""
    try:
        return os.path.samestat(os.lstat(work), os.lstat(dest))
    except OSError:
        return False


def _written_by_this_filing(dest: Path, receipt: Receipt) -> bool:
    """Whether the receipt at `dest` records this very filing (same outcome, document, content
    and source), beside its file."""
    try:
        found = read_receipt(receipt_path(dest))
        regular = stat.S_ISREG(os.lstat(dest).st_mode)
    except (OSError, ValueError):
        return False
    ours = receipt.to_dict()
    keys = ("status", "document_id", "sha256", "source", "file")
    return regular and all(found.get(key) == ours.get(key) for key in keys)


def _our_copy(work: Path, dest: Path, sha256: str | None) -> bool:
    """Whether `dest` is the copy an interrupted move of `work` already made: the same file
    (a link), or the same size and SHA-256, with no receipt beside it yet."""
    try:
        st_work, st_dest = os.lstat(work), os.lstat(dest)
        if os.path.samestat(st_work, st_dest):
            return True
        if os.path.lexists(receipt_path(dest)) or st_work.st_size != st_dest.st_size:
            return False
        if not (stat.S_ISREG(st_work.st_mode) and stat.S_ISREG(st_dest.st_mode)):
            return False
        digests = {_sha256_of(work), _sha256_of(dest)}
    except OSError:
        return False
    return len(digests) == 1 and (sha256 is None or sha256 in digests)


def _cut_short(work: Path, dest: Path) -> bool:
    """Whether `dest` is a copy of `work` that was cut short (the process died while copying
    onto a share without hard links): shorter, its bytes a prefix of `work`'s, and no receipt
    beside it. Only a copy of ours can be that; it is removed and the copy made again."""
    try:
        st_work, st_dest = os.lstat(work), os.lstat(dest)
        if os.path.lexists(receipt_path(dest)) or not st_dest.st_size < st_work.st_size:
            return False
        if not (stat.S_ISREG(st_work.st_mode) and stat.S_ISREG(st_dest.st_mode)):
            return False
        return _sha256_of(dest) == _sha256_of(work, limit=st_dest.st_size)
    except (OSError, content.UnsafeFile):
        return False


def _sha256_of(path: Path, limit: int | None = None) -> str:
    """SHA-256 of the file at `path`, or of its first `limit` bytes."""
    fd, _ = content.open_regular(path)
    try:
        if limit is None:
            return content.StreamedDigest(fd).hexdigest()
        digest, offset = hashlib.sha256(), 0
        while offset < limit:
            chunk = os.pread(fd, min(content.CHUNK, limit - offset), offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)
