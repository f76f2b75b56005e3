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
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
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
    src: Path, dest: Path, copy_from: Path | bytes | None = None, watched: bool = False
) -> None:
    """Move `src` to `dest` on one file system without ever overwriting `dest`
    (FileExistsError): a hard link and an unlink, else the fallbacks above.

    `copy_from`, when `src` is a temporary copy, is what it was made from (a path, or the
    bytes): an exclusive copy is then made from that and `src` is never read again (on a FUSE
    share a file just closed may still count as open when it is removed).

    `watched`: `dest` is in the inbox, where any file that stops growing is taken for a
    finished one. A copy there is made under a hidden name and only given `dest` when whole
    (`publish`): a crash half-way must not leave a truncated file to be uploaded."""
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
            if copy_from is None:
                clear_stale_copies(dest)
                hidden = hidden_copy_name(dest)
                copy_exclusive(src, hidden)
                try:
                    publish(hidden, dest)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(hidden)
                    raise
            else:
                publish(src, dest)  # `src` is already a whole hidden copy beside `dest`
                return
        elif copy_from is None:
            copy_exclusive(src, dest)
        else:
            os.unlink(src)
            if isinstance(copy_from, bytes):
                with new_file(dest) as writer:
                    writer.write(copy_from)
            else:
                copy_exclusive(copy_from, dest)
            return
    os.unlink(src)


def hidden_copy_name(dest: Path) -> Path:
    """A name beside `dest` for a copy being made: hidden, so the inbox leaves it alone, and
    its own (two copies made to one name at once must never share one: the second would remove
    the first's and the first give the second's half-made copy the name)."""
    return dest.with_name(f".{_cut_bytes(dest.name, 200)}.{secrets.token_hex(4)}{COPY_SUFFIX}")


def clear_stale_copies(dest: Path) -> None:
    """Remove the copies to `dest`'s name that a crash left behind (documents: not to be left
    lying about), once they are `STALE_COPY_SECONDS` old; a younger one may be another
    process's, still being made."""
    prefix = f".{_cut_bytes(dest.name, 200)}."
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return
    now = time.time()
    for name in names:
        if name.startswith(prefix) and name.endswith(COPY_SUFFIX):
            with contextlib.suppress(OSError):
                if now - os.lstat(dest.parent / name).st_mtime > STALE_COPY_SECONDS:
                    os.unlink(dest.parent / name)


def _cut_bytes(name: str, limit: int) -> str:
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def publish(hidden: Path, dest: Path) -> None:
    """Give a whole, fsynced copy its name `dest` on a file system without hard links or
    renameat2, never over another file: `dest` is first created empty with O_EXCL (so it is
    ours), then the copy renamed over that. Where rename will not replace a file (SFTP without
    its posix-rename extension), the empty file is removed and the copy renamed: such a rename
    cannot overwrite anything either. A crash in between leaves an empty file, which the inbox
    waits on and never uploads as a document."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        placeholder = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.replace(hidden, dest)
        return
    except OSError as exc:
        refused = exc.errno in REFUSED_REPLACE_ERRNOS
        _remove_placeholder(dest, placeholder)
        if not refused:
            raise
    os.rename(hidden, dest)


def _remove_placeholder(dest: Path, placeholder: os.stat_result) -> None:
    """Remove the empty file `publish` created, only while `dest` is still that file."""
    with contextlib.suppress(OSError):
        now = os.lstat(dest)
        if os.path.samestat(now, placeholder) and now.st_size == 0:
            os.unlink(dest)
            return
    raise FileExistsError(errno.EEXIST, "destination exists")


COPY_SUFFIX = ".ingestd-copy"
STALE_COPY_SECONDS = 3600.0  # a copy this old to the same name was left by a crash

# What rename() answers where it will not replace an existing file.
REFUSED_REPLACE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EEXIST", "EPERM", "EACCES", "ENOTEMPTY", "ENOTSUP", "EOPNOTSUPP")
    if hasattr(errno, name)
)
