"""Putting a file into done/ or failed/: a free name, and a move that never overwrites.

Names: `<stem> (1)<ext>`, `(2)`, … until both the file name and its receipt name are free; names
whose receipt name would pass 255 bytes are shortened. Moves: a hard link then an unlink within
one file system (link fails rather than overwrite; filing.moves.move_no_replace has the
fallbacks for file systems without hard links); across file systems a copy to a hidden name,
fsync, a move into place, then unlink of the source.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Collection
from pathlib import Path

from ingestd.filing.moves import cut_bytes, move_no_replace, new_hidden_copy, remove_source
from ingestd.filing.receipts import SUFFIX, fsync_dir

NAME_MAX = 255
FOLDER_MODE = 0o750


def split_name(name: str) -> tuple[str, str]:
    """`scan.pdf` → (`scan`, `.pdf`); `README` → (`README`, ``); `.x` stays whole."""
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


def _fits(name: str) -> bool:
    return len(os.fsencode(name + SUFFIX)) <= NAME_MAX


def candidate(name: str, n: int) -> str:
    """The n-th name to try (0 = the name itself), shortened to leave room for the receipt."""
    stem, ext = split_name(name)
    if len(os.fsencode(ext)) > 32:  # an absurd "extension" is part of the stem
        stem, ext = name, ""
    tag = f" ({n})" if n else ""
    room = NAME_MAX - len(os.fsencode(SUFFIX + tag + ext))
    return cut_bytes(stem, room) + tag + ext


def free_name(folder: Path, name: str, taken: Collection[str] = ()) -> str:
    """The first candidate name, not among `taken`, such that neither it nor its receipt
    exists in `folder`."""
    n = 0
    while True:
        option = candidate(name, n)
        if (
            option not in taken
            and not os.path.lexists(folder / option)
            and not os.path.lexists(folder / (option + SUFFIX))
        ):
            return option
        n += 1


def make_folders(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    except FileExistsError:
        # A file where a folder should be: not a name collision, a folder that cannot work.
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder") from None


def place(
    src: Path, dest: Path, sync: bool = True, watched: bool = False, tag: str | None = None
) -> None:
    """Move `src` to `dest` without ever overwriting `dest` (FileExistsError if it exists).

    sync=False leaves the fsync of dest's folder to the caller (who writes a receipt there next).
    watched=True: `dest` is in the inbox; a copy is never seen there until it is whole, and a
    move whose source cannot be removed is undone. `tag` names a hidden copy after what it is
    for (filing.moves.hidden_copy_name).
    """
    make_folders(dest.parent)
    try:
        move_no_replace(src, dest, watched=watched, tag=tag)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        made = _copy_across(src, dest, watched, tag)
        if watched:
            remove_source(src, dest, made)
        else:
            os.unlink(src)
    if sync:
        fsync_dir(dest.parent)


def _copy_across(src: Path, dest: Path, watched: bool, tag: str | None) -> os.stat_result:
    """Copy to a hidden name beside `dest`, fsync, then move that into place (no overwrite);
    what is at `dest` then. The hidden copy never outlives a failure; one a crash left is
    replaced when the same move is tried again (`tag`), or swept once it is an hour old."""
    tmp = new_hidden_copy(src, dest, tag)
    try:
        move_no_replace(tmp, dest, copy_from=src, watched=watched)
        return os.lstat(dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
