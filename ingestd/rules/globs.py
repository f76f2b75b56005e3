"""Globs on file names (case-insensitive) and on paths relative to the patient folder
(`referrals/*`, `lab/**`), compiled to anchored regular expressions."""

from __future__ import annotations

import fnmatch
import functools
import re


def _char_class(pattern: str, start: int) -> tuple[str, int] | None:
    """The regex for a `[...]` class starting at `start`, and the index after it."""
    end = start + 1
    if end < len(pattern) and pattern[end] in "!^":
        end += 1
    if end < len(pattern) and pattern[end] == "]":
        end += 1
    end = pattern.find("]", end)
    if end < 0:
        return None
    body = pattern[start + 1 : end].replace("\\", "\\\\")
    if body[:1] in ("!", "^"):
        body = "^/" + body[1:]
    return f"[{body}]", end + 1


@functools.lru_cache(maxsize=256)
def path_regex(glob: str) -> re.Pattern[str]:
    """A glob over `/`-separated paths: `*` and `?` stay within a folder, `**` crosses folders."""
    out: list[str] = []
    index = 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif glob[index] == "*":
            out.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            out.append("[^/]")
            index += 1
        elif glob[index] == "[" and (found := _char_class(glob, index)):
            out.append(found[0])
            index = found[1]
        else:
            out.append(re.escape(glob[index]))
            index += 1
    # Case-insensitive like `filename`: scanners and SMB clients vary the case of folder names.
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=256)
def name_regex(glob: str) -> re.Pattern[str]:
    """A case-insensitive fnmatch glob on a file name."""
    return re.compile(fnmatch.translate(glob), re.IGNORECASE)
