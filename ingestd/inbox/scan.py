"""Scanning the inbox: the truth that watchdog's hints only point at. Lazy (a generator the loop
advances a slice at a time), never following links, skipping hidden and temporary names and
ingestd's own folder, and telling the caller of folders it found and folders that failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from ingestd.names import is_ignored_name

log = logging.getLogger("ingestd.watcher")


INBOX_ROOT = PurePosixPath()


def scan(
    root: Path,
    start: PurePosixPath = INBOX_ROOT,
    on_folder: Callable[[PurePosixPath], None] | None = None,
    on_error: Callable[[PurePosixPath, OSError], None] | None = None,
) -> Iterator[PurePosixPath]:
    """Every non-folder path below `root/start`, inbox-relative, skipping hidden and temporary
    names; never follows links. Lazy: the tree is never held in memory. `on_folder` is told of
    every folder listed, `on_error` of every folder that could not be listed for a reason
    other than being gone or forbidden (a share that stopped answering); without it, such an
    error is raised."""
    stack = [start]
    while stack:
        rel = stack.pop()
        if on_folder is not None and rel.parts:
            on_folder(rel)
        try:
            with os.scandir(root / rel) as entries:
                for entry in entries:
                    if is_ignored_name(entry.name):
                        continue
                    child = rel / entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(child)
                            continue
                    except OSError:
                        continue
                    yield child
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        except OSError as exc:
            if on_error is None:
                raise
            on_error(rel, exc)
