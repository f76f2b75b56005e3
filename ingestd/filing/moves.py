"""Moves that never overwrite, also on network shares without hard links.

 a hard link then an unlink is the move that cannot overwrite. SMB mounts through FUSE
(smbnetfs) and SFTP servers without the hardlink extension refuse link() (EPERM, ENOTSUP, …);
there the fallback is renameat2(RENAME_NOREPLACE) where the kernel and file system support it,
else a new file created with O_EXCL, copied, fsynced, and then the source unlinked. Either way the
destination is never overwritten and no hidden copy is left behind. The first fallback is logged
once per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import BinaryIO

from ingestd.observe.logs import event
from ingestd.unreachable import errno_name

log = logging.getLogger("ingestd.shares")

# link() answers on file systems that have no hard links (or refuse them).
NO_LINK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK")
    if hasattr(errno, name)
)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_said: set[str] = set()
_said_lock = threading.Lock()


def _say_once(fallback: str, exc: OSError) -> None:
    with _said_lock:
        if fallback in _said:
            return
        _said.add(fallback)
    event(
        log,
        logging.WARNING,
        "hard_links_unavailable",
        reason=exc.strerror or errno_name(exc),
        fallback=fallback,
        action="none needed; files are still never overwritten",
    )


def _libc_renameat2() -> object | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return getattr(libc, "renameat2", None)


_renameat2 = _libc_renameat2()


def rename_noreplace(src: Path, dest: Path) -> bool:
    """rename(src, dest) that fails if dest exists. False when this system or file system
    cannot do it (the caller copies instead); FileExistsError when dest exists."""
    if _renameat2 is None:
        return False
    result = _renameat2(  # type: ignore[operator]
        _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err))
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err))


def copy_exclusive(src: Path, dest: Path, mode: int = 0o640) -> None:
    """Create `dest` (O_EXCL: never over another file) as a copy of `src`, fsynced. A copy
    that fails half-way is removed: nothing partial is left under `dest`."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
        return
    if stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dest, 0o600)
        return
    with new_file(dest, mode) as writer:
        if stat.S_ISREG(st.st_mode):
            # Sockets and devices cannot be copied: an empty placeholder keeps the name.
            with open(src, "rb", opener=_no_follow) as reader:
                shutil.copyfileobj(reader, writer, 1 << 20)


@contextlib.contextmanager
def new_file(path: Path, mode: int = 0o640) -> Iterator[BinaryIO]:
    """A file created with O_EXCL (never over another), flushed and fsynced when the block
    ends; removed if the block fails, so nothing partial is left under `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as writer:
            yield writer
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def move_no_replace(
    src: Path,
    dest: Path,
    copy_from: Path | bytes | None = None,
    watched: bool = False,
    tag: str | None = None,
    taken: Callable[[], Path | None] | None = None,
) -> None:
    """Move `src` to `dest` on one file system without ever overwriting `dest`
    (FileExistsError): a hard link and an unlink, else the fallbacks above.

    `copy_from`, when `src` is a temporary copy, is what it was made from (a path, or the
    bytes): an exclusive copy is then made from that and `src` is never read again (on a FUSE
    share a file just closed may still count as open when it is removed).

    `watched`: `dest` is in the inbox, where any file that stops growing is taken for a
    finished one. A copy there is made under a hidden name and only given `dest` when whole
    (`publish`): a crash half-way must not leave a truncated file to be uploaded. And a move
    whose source cannot be removed is undone (`remove_source`): the file must not wait in the
    inbox while it is also still where it came from (claimed, or in failed/).

    `tag`: what names the hidden copy (see `hidden_copy_name`); `taken`: see `remove_source`."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "destination exists") from exc
        if exc.errno not in NO_LINK_ERRNOS:
            raise
        if rename_noreplace(src, dest):
            _say_once("rename without overwrite", exc)
            return
        _say_once("exclusive copy", exc)
        if watched and not isinstance(copy_from, bytes):
            if copy_from is not None:
                publish(src, dest)  # `src` is a whole hidden copy; the caller removes the original
                return
            hidden = new_hidden_copy(src, dest, tag)
            try:
                made = publish(hidden, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(hidden)
                raise
            remove_source(src, dest, made, taken)
            return
        if copy_from is None:
            copy_exclusive(src, dest)
        else:
            os.unlink(src)
            if isinstance(copy_from, bytes):
                with new_file(dest) as writer:
                    writer.write(copy_from)
            else:
                copy_exclusive(copy_from, dest)
            return
    if watched:
        remove_source(src, dest, None, taken)
    else:
        os.unlink(src)


def remove_source(
    src: Path,
    dest: Path,
    made: os.stat_result | None,
    taken: Callable[[], Path | None] | None = None,
) -> None:
    """The last step of a move into the inbox: remove the source. If that fails (a share gone
    between two calls, an SMB file a writer still holds open) while the source is still
    there, what the move put at `dest` is removed again — only while it is that very file:
    the copy `made`, or (None) a hard link to `src`, which may have grown meanwhile — and the
    error raised. A source gone after all was removed, only the answer lost: the move is done
    — unless `taken` (the caller's check) finds it taken over meanwhile by another instance,
    whose file it now is: then the inbox name goes."""
    try:
        os.unlink(src)
    except OSError:
        try:
            there: os.stat_result | None = os.lstat(src)
        except FileNotFoundError:
            elsewhere = taken() if taken is not None else None
            if elsewhere is None:
                return
            with contextlib.suppress(OSError):
                if made is not None:
                    _remove_if(dest, (made,))
                elif os.path.samestat(os.lstat(dest), os.lstat(elsewhere)):
                    os.unlink(dest)
            raise
        except OSError:
            # Cannot tell whether the unlink was done: the inbox file stays (at worst sent
            # twice; removing it might lose the only copy).
            there = None
        if there is not None:
            with contextlib.suppress(OSError):
                if made is not None:
                    _remove_if(dest, (made,))
                elif os.path.samestat(os.lstat(dest), there):
                    os.unlink(dest)
        raise


def hidden_copy_name(dest: Path, tag: str | None = None) -> Path:
    """A name beside `dest` for a copy being made: hidden, so the inbox leaves it alone, and
    its own — two copies made to one name at once must never share one (the second would
    remove the first's, and the first give the second's half-made copy the name). `tag` names
    the copy after what it is for (`copy_tag`: one instance's row), so that the copy a crash
    left is found when the same instance tries the same move again; without one, random."""
    part = tag if tag is not None else secrets.token_hex(4)
    return dest.with_name(f".{cut_bytes(dest.name, 200)}.{part}{COPY_SUFFIX}")


def copy_tag(instance: str, what: PurePath) -> str:
    """A short, stable tag for the hidden copies one instance makes for `what` (a claim's
    work path). The instance is part of it: a survivor of a fleet that takes a row over keeps
    its work path, and must never share (and remove) a copy the stalled holder is making."""
    key = os.fsencode(f"{instance}\0{what}")
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def new_hidden_copy(src: Path, dest: Path, tag: str | None) -> Path:
    """An exclusive, fsynced copy of `src` under `hidden_copy_name(dest, tag)`. A tagged copy
    left by an earlier try of this instance is replaced; copies that a crash left under random
    names are swept from the folder once they are an hour old (`sweep_stale_copies`)."""
    hidden = hidden_copy_name(dest, tag)
    if tag is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(hidden)  # this instance's own, for this very row, left by a crash
    copy_exclusive(src, hidden)
    with contextlib.suppress(OSError):
        sweep_stale_copies(dest.parent, os.lstat(hidden).st_mtime)
    return hidden


_swept: dict[str, float] = {}  # folder → when it was last swept (time.monotonic())
_swept_lock = threading.Lock()


def sweep_stale_copies(folder: Path, now: float) -> None:
    """Remove hidden copies in `folder` that are `STALE_COPY_SECONDS` old by `now`, the
    folder's own clock (the mtime of a file just written there: a share's clock may differ
    from this host's), at most once an hour per folder: a younger copy may be another
    process's, still being made."""
    key = os.fsdecode(folder)
    with _swept_lock:
        if time.monotonic() - _swept.get(key, -STALE_COPY_SECONDS) < STALE_COPY_SECONDS:
            return
        _swept[key] = time.monotonic()
        if len(_swept) > 10_000:  # bounded: one entry per folder copied into
            _swept.clear()
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(COPY_SUFFIX):
            with contextlib.suppress(OSError):
                if now - os.lstat(folder / name).st_mtime > STALE_COPY_SECONDS:
                    os.unlink(folder / name)


def cut_bytes(text: str, limit: int) -> str:
    """`text` shortened by whole characters to at most `limit` bytes (file system encoding)."""
    while text and len(os.fsencode(text)) > limit:
        text = text[:-1]
    return text


def publish(hidden: Path, dest: Path) -> os.stat_result:
    """Give a whole, fsynced copy its name `dest` on a file system without hard links or
    renameat2, never over another file: `dest` is first created empty with O_EXCL (so it is
    ours), then the copy renamed over that. Where rename will not replace a file (SFTP without
    its posix-rename extension), the empty file is removed and the copy renamed: such a rename
    cannot overwrite anything either. A crash in between leaves an empty file, which the inbox
    waits on and never uploads as a document. Returns what is now at `dest` (the copy)."""
    copy = os.lstat(hidden)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        placeholder = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.replace(hidden, dest)
        return copy
    except OSError as exc:
        if exc.errno not in REFUSED_REPLACE_ERRNOS:
            # It may have been done and only the answer lost: neither the empty file nor the
            # copy is left under the name (the caller still has the source).
            _remove_if(dest, (placeholder, copy))
            raise
        if not _remove_if(dest, (placeholder,)):
            raise FileExistsError(errno.EEXIST, "destination exists") from exc
    os.rename(hidden, dest)
    return copy


def _remove_if(path: Path, files: tuple[os.stat_result, ...]) -> bool:
    """Remove `path` if it is one of `files`, unchanged: the same device and inode, size and
    modification time (an inode number is reused at once for a new file once the old one is
    deleted); whether it did."""
    try:
        now = os.lstat(path)
        if any(_unchanged(now, made) for made in files):
            os.unlink(path)
            return True
    except OSError:
        pass
    return False


def _unchanged(now: os.stat_result, made: os.stat_result) -> bool:
    return os.path.samestat(now, made) and (now.st_size, now.st_mtime_ns) == (
        made.st_size,
        made.st_mtime_ns,
    )


COPY_SUFFIX = ".ingestd-copy"
STALE_COPY_SECONDS = 3600.0  # a copy this old to the same name was left by a crash

# What rename() answers where it will not replace an existing file.
REFUSED_REPLACE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EEXIST", "EPERM", "EACCES", "ENOTEMPTY", "ENOTSUP", "EOPNOTSUPP")
    if hasattr(errno, name)
)
