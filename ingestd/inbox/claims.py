"""Claiming: taking a ready file out of the inbox by one atomic rename into a hidden work folder.

The rename is the lock: on one file system only one process can win it, so several instances on
one inbox (even with separate journals) never take the same file. The journal row is written
*before* the rename (state `claiming`) and marked `claimed` after it, so a crash in between is
settled at start-up by looking whether the work file exists.

Work folder: `<inbox>/.ingestd/work/<instance>/<claim>-<inbox-relative path, encoded>`.
One flat folder: a folder per claim would make watchdog add (and drop) an inotify watch for every
file. The journal keeps the original path; the encoded one in the name lets a person — or
`return_orphan` and `take_over`, which have no journal to read — trace a claimed file back.
The encoding survives every file system's name rules: only ASCII letters and digits, every other
byte as `_XX` (hex), so no `%` (smbnetfs URL-decodes names), none of `\\ / : * ? " < > |` that
SMB refuses, no trailing dot or space, and at most 255 characters (SMB's limit for a name); a
name too long to carry the path whole is `<claim>--<cut encoding>` and cannot be traced. Names
of the earlier scheme (`<claim>~<percent-encoded path>`, `<claim>!<cut>`) are still read.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
import string
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd.clock import utc_iso
from ingestd.content import Snapshot
from ingestd.filing.moves import copy_tag, move_no_replace
from ingestd.inbox.settle import Ready
from ingestd.journal import (
    AlreadyClaimed,
    ClaimLost,
    JournalLike,
    JournalRefused,
    JournalUnavailable,
    Row,
)
from ingestd.observe.logs import Masker, event
from ingestd.observe.statefiles import read_or_create
from ingestd.unreachable import errno_name, is_unavailable

log = logging.getLogger("ingestd.claims")

PRIVATE_DIR = ".ingestd"
WORK_DIR = PurePosixPath(PRIVATE_DIR) / "work"
NAME_MAX = 255
LEASE_FILE = ".lease"
_PLAIN = frozenset(string.ascii_letters + string.digits)
_HEX = frozenset("0123456789abcdefABCDEF")


def encode_path(rel: PurePosixPath) -> str:
    """Letters and digits as they are, every other byte as `_XX`."""
    return "".join(
        chr(byte) if chr(byte) in _PLAIN else f"_{byte:02X}" for byte in os.fsencode(str(rel))
    )


def decode_path(encoded: str) -> PurePosixPath | None:
    """The path `encode_path` encoded; None when `encoded` is not such an encoding."""
    out = bytearray()
    i = 0
    while i < len(encoded):
        char = encoded[i]
        if char in _PLAIN:
            out.append(ord(char))
            i += 1
            continue
        code = encoded[i + 1 : i + 3]
        if char != "_" or len(code) != 2 or not all(c in _HEX for c in code):
            return None
        out.append(int(code, 16))
        i += 3
    return PurePosixPath(os.fsdecode(bytes(out)))


def work_name(claim: str, rel: PurePosixPath) -> str:
    """`<claim>-<encoded path>`, or `<claim>--<cut encoded path>` when it does not fit."""
    encoded = encode_path(rel)
    whole = f"{claim}-{encoded}"
    if len(whole) <= NAME_MAX:
        return whole
    cut = encoded[: NAME_MAX - len(claim) - 2]
    return f"{claim}--{cut}"


def new_claim() -> str:
    """A claim: 128 random bits, so an identity derived from it is unique beyond one clinic."""
    return secrets.token_hex(16)


def claim_of(name: str) -> str | None:
    """The claim a work name starts with (either naming scheme); None when it is not ours."""
    for sep in ("-", "~"):
        claim, found, _ = name.partition(sep)
        if found and claim and all(c in _HEX for c in claim):
            return claim.lower()
    return None


def claim_key(work: PurePosixPath) -> str:
    """What identifies a claimed file's document across retries, crashes and takeovers."""
    return f"ingestd-claim:{claim_of(work.name) or work}"


def _same_file(st: os.stat_result | None, snap: Snapshot) -> bool:
    # ctime is left out: the rename itself changes it.
    return st is not None and (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (
        snap.ino,
        snap.dev,
        snap.size,
        snap.mtime_ns,
    )


def source_of(name: str) -> PurePosixPath | None:
    """The inbox path a work name was claimed from; None when it was cut or is not ours."""
    claim, sep, encoded = name.partition("-")
    if sep and claim and all(c in _HEX for c in claim):
        rel = None if encoded.startswith("-") else decode_path(encoded)
    else:
        rel = _old_source_of(name)
    if rel is None or rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel


def _old_source_of(name: str) -> PurePosixPath | None:
    """The earlier scheme: `<claim>~<percent-encoded path>` (claimed before an upgrade)."""
    claim, sep, encoded = name.partition("~")
    if not sep or not claim or not all(c in _HEX for c in claim):
        return None
    return PurePosixPath(os.fsdecode(urllib.parse.unquote_to_bytes(encoded)))


def instance_id(state_dir: Path) -> str:
    """This installation's stable id (one per journal), kept in the state folder."""
    made = read_or_create(state_dir / "instance.id", lambda: secrets.token_hex(6).encode() + b"\n")
    return made.decode().strip()


@dataclass
class Claimer:
    inbox: Path
    journal: JournalLike
    instance: str
    masker: Masker
    # Files that could not be claimed, with the reason last logged: logged once, not at
    # every attempt (they stay in the settler, counted as waiting).
    _unclaimable: dict[PurePosixPath, str] = field(default_factory=dict)
    # Told of a folder whose share stopped answering (the daemon pauses it); unset, such a
    # file is logged like any other that cannot be claimed.
    on_unavailable: Callable[[PurePosixPath, OSError], None] | None = None

    def claim(self, ready: Ready) -> Row | None:
        """Move a ready file into the work folder; None when another process took it first
        or it changed since it was judged ready (the caller looks at it again)."""
        rel = ready.rel
        work = WORK_DIR / self.instance / work_name(new_claim(), rel)
        # The row stays `claiming` until a worker records its decision (one journal write fewer
        # per file); a `claiming` row whose work file exists is a claimed file (see recover).
        owner = ready.snapshot.uid if ready.snapshot is not None else None
        snap = ready.snapshot
        try:
            row = self.journal.add(
                rel,
                work,
                utc_iso(ready.received),
                identity=None if snap is None else f"{snap.size}:{snap.mtime_ns}",
                owner_uid=owner,
                format=ready.format,
            )
        except (AlreadyClaimed, JournalUnavailable):
            # Another instance of the fleet claims it; or the shared journal is down, and
            # nothing new is claimed until it answers. Either way the file stays in the inbox.
            return None
        except JournalRefused as exc:
            # The database takes no row for this file (a path longer than its index takes):
            # it stays in the inbox, said once, and the claims of other files go on.
            self._say_unclaimable(ready.rel, exc.args[0], "JOURNAL_REFUSED")
            return None
        work_path = self.inbox / work
        try:
            # No mkdir here: on a share that went away, claiming must fail rather than build
            # a work folder on the bare mount point (see work_folder_present).
            os.rename(self.inbox / rel, work_path)
        except OSError as exc:
            self.journal.delete(row.id)
            self._not_claimed(ready, exc)
            return None
        if not os.path.lexists(work_path):
            # The rename "worked" but the file is not where it was sent (a file system that
            # rewrites names): never claimed, and not lost if it is still in the inbox.
            self.journal.delete(row.id)
            lost = OSError(errno.ENOENT, "the renamed file is not at its work name")
            self._not_claimed(ready, lost)
            return None
        self._unclaimable.pop(rel, None)
        try:
            st: os.stat_result | None = os.lstat(work_path)
        except OSError:
            st = None
        fixes: dict[str, Any] = {}
        if ready.snapshot is not None and not _same_file(st, ready.snapshot):
            # Replaced between the last look and the rename: give it back to settle again.
            if self._give_back(work_path, self.inbox / rel):
                self.journal.delete(row.id)
                return None
            # Kept (its inbox path is taken again): the type seen at the last look was
            # another file's, so the pipeline detects it anew.
            fixes["format"] = None
        if st is not None and st.st_uid != row.owner_uid:  # not a regular file, or chowned
            fixes["owner_uid"] = st.st_uid
        try:
            return self.journal.change(row, **fixes) if fixes else row
        except ClaimLost:
            return None  # taken over meanwhile (this instance stalled past its lease): theirs

    def _not_claimed(self, ready: Ready, exc: OSError) -> None:
        """Log why a file was not claimed, once per file and reason, unless another instance
        holds it (its win, not a problem)."""
        rel = ready.rel
        if self.on_unavailable is not None and is_unavailable(exc):
            self.on_unavailable(rel.parent, exc)
            return
        level, reason = logging.ERROR, exc.strerror or errno_name(exc)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.lexists(self.inbox / rel):
            # Gone from the inbox: another instance claimed it, or a person removed it.
            self._unclaimable.pop(rel, None)
            if self._held_elsewhere(ready):
                return
            level, reason = logging.WARNING, "the file disappeared while being claimed"
        self._say_unclaimable(rel, reason, errno_name(exc), level)

    def _say_unclaimable(
        self, rel: PurePosixPath, reason: str, code: str, level: int = logging.ERROR
    ) -> None:
        """Log once per file and reason why it cannot be claimed now."""
        if self._unclaimable.get(rel) == reason:
            return
        if len(self._unclaimable) > 10_000:
            self._unclaimable.clear()  # a bound on memory; the worst case is a repeated line
        self._unclaimable[rel] = reason
        event(
            log,
            level,
            "claim_failed",
            file=self.masker.path(rel),
            reason=reason,
            errno=code,
            action="the file waits in the inbox and is tried again",
        )

    def _held_elsewhere(self, ready: Ready) -> bool:
        """Whether some instance's work folder holds this file (same size and mtime)."""
        snap = ready.snapshot
        if snap is None:
            return True  # nothing to compare: not a regular file, and nothing to lose
        if self.journal.shared and self.journal.by_source(ready.rel):
            return True  # the fleet's journal knows it: claimed (maybe finished) by another
        base = self.inbox / WORK_DIR
        try:
            folders = os.listdir(base)
        except OSError:
            return False
        for folder in folders:
            try:
                with os.scandir(base / folder) as entries:
                    for entry in entries:
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_size, st.st_mtime_ns) == (snap.size, snap.mtime_ns):
                            return True
            except OSError:
                continue
        return False

    def _give_back(self, work_path: Path, source: Path) -> bool:
        """Put a claimed file back at its inbox path, never over another file. A move that
        cannot remove the work file is undone (filing.moves.remove_source): the file, still
        claimed, must not also wait in the inbox to be claimed and sent a second time."""
        try:
            tag = copy_tag(self.instance, work_path.relative_to(self.inbox))
            taken = functools.partial(self._taken_over, work_path.name)
            move_no_replace(work_path, source, watched=True, tag=tag, taken=taken)
        except OSError:
            return False
        return True

    def _taken_over(self, name: str) -> Path | None:
        """Where another instance's work folder now holds this work file (it took the claim
        over: the claim stays in the name, whichever naming scheme), or None."""
        claim = claim_of(name)
        base = self.inbox / WORK_DIR
        for instance in os.listdir(base):
            if instance == self.instance or instance.startswith("."):
                continue
            try:
                names = os.listdir(base / instance)
            except OSError:
                continue  # not a folder, gone, or not ours to read: nothing found there
            for other in names:
                if other == name or (claim is not None and claim_of(other) == claim):
                    return base / instance / other
        return None

    def prepare(self) -> None:
        """Create this instance's work folder (at start-up, while the inbox is known good)."""
        (self.inbox / WORK_DIR / self.instance).mkdir(parents=True, exist_ok=True, mode=0o700)

    def touch_lease(self) -> float:
        """Say this instance is alive; returns the file system's idea of now (its mtime), so
        leases compare times from one clock even across hosts sharing the inbox."""
        lease = self.inbox / WORK_DIR / self.instance / LEASE_FILE
        try:
            lease.touch(mode=0o600)
            return lease.stat().st_mtime
        except OSError:
            return time.time()

    def stale_instances(self, lease_seconds: float) -> list[str]:
        """Other instances whose lease ran out: gone, and their claims are ours to take."""
        now = self.touch_lease()
        base = self.inbox / WORK_DIR
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        stale = []
        for name in names:
            if name == self.instance or name.startswith("."):
                continue
            folder = base / name
            try:
                seen = (folder / LEASE_FILE).stat().st_mtime
            except OSError:
                try:
                    seen = folder.stat().st_mtime
                except OSError:
                    continue
            if now - seen > lease_seconds:
                stale.append(name)
        return stale

    def take_over(self, other: str) -> list[Row]:
        """Claim every file a gone instance left claimed. Its journal is not ours to read, so
        each outcome is unknown: the EHR is asked before anything is sent again."""
        folder = WORK_DIR / other
        try:
            names = sorted(os.listdir(self.inbox / folder))
        except OSError:
            return []
        rows = []
        for name in names:
            if name.startswith("."):
                continue
            source = self._traceable(folder / name)
            if source is None:
                continue
            # The claim stays the one the gone instance made: a document's identity (claim_key)
            # must survive a takeover as it survives a crash.
            work = WORK_DIR / self.instance / work_name(claim_of(name) or new_claim(), source)
            row = self.journal.add(source, work, utc_iso(time.time()), outcome_unknown=True)
            try:
                os.rename(self.inbox / folder / name, self.inbox / work)
            except OSError:
                self.journal.delete(row.id)  # another instance took it first
                continue
            rows.append(self.journal.change(row, state="uploading"))
        if rows:
            event(log, logging.WARNING, "claims_taken_over", instance=other, files=len(rows))
        return rows

    def _traceable(self, work: PurePosixPath) -> PurePosixPath | None:
        """The inbox path a work file came from, or None (logged) when its name was cut."""
        source = source_of(work.name)
        if source is None:
            event(
                log,
                logging.ERROR,
                "orphan_untraceable",
                work=self.masker.path(work),
                action="move it back into the patient folder by hand",
            )
        return source

    def work_folder_present(self) -> bool:
        """False when the inbox (a share, say) is not there: claimed files are not lost then."""
        return (self.inbox / WORK_DIR / self.instance).is_dir()

    def release(self, row: Row) -> bool:
        """Give a claimed file back to the inbox (it changed while being read, or a rule says
        to leave it alone) and forget the row. False when the inbox path is taken again."""
        if not self._give_back(self.inbox / row.work, self.inbox / row.source):
            return False
        self.journal.delete(row.id)
        return True

    def recover(self, taken: list[Row] | None = None) -> list[Row]:
        """Settle claims a crash interrupted (this instance's, or those `taken` over from a dead
        one in a shared journal); return every row that still has work to do."""
        rows = []
        for row in self.journal.held() if taken is None else taken:
            if row.state == "claiming":
                if not os.path.lexists(self.inbox / row.work):
                    self.journal.delete(row.id)  # never renamed: still in the inbox, or gone
                    continue
                row = self.journal.change(row, state="claimed")
            rows.append(row)
        return rows

    def orphans(self, known: set[PurePosixPath]) -> list[PurePosixPath]:
        """Files in this instance's work folder that no journal row knows (journal lost)."""
        base = WORK_DIR / self.instance
        try:
            names = os.listdir(self.inbox / base)
        except FileNotFoundError:
            return []
        # Hidden names are ours (the lease), not claims.
        return [base / n for n in names if not n.startswith(".") and base / n not in known]

    def return_orphan(self, work: PurePosixPath) -> None:
        """Put an unknown work file back at its original inbox path, never over another file.

        Its upload outcome is unknown (the journal that knew it is gone), so a person should
        look: the log line says so. A cut name cannot be traced and stays where it is.
        """
        source = self._traceable(work)
        if source is None:
            return
        target = self.inbox / source
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            returned = self._give_back(self.inbox / work, target)
        except OSError:
            returned = False
        event(
            log,
            logging.WARNING if returned else logging.ERROR,
            "orphan_found",
            file=self.masker.path(source),
            returned=returned,
            action="the journal did not know it; check the EHR for a duplicate",
        )
