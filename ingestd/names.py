"""Which inbox names ingestd looks at, and how an inbox path splits into patient folder and rest.

Pure functions on names: no file-system access.
"""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

# Names writers use while a file is still being written or that belong to the desktop, not to
# a document (contract: "Disk layout").
TEMPORARY_PATTERNS = ("*.tmp", "*.part", "*.crdownload", "~$*", ".~lock.*#")
DESKTOP_JUNK = frozenset({"thumbs.db", "desktop.ini"})


def is_ignored_name(name: str) -> bool:
    """True for hidden, temporary and desktop-junk names (one path component)."""
    if not name or name.startswith("."):
        return True
    lowered = name.lower()
    if lowered in DESKTOP_JUNK:
        return True
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in TEMPORARY_PATTERNS)


def is_ignored_path(rel: PurePosixPath) -> bool:
    """True when any component of an inbox-relative path is hidden or temporary."""
    return any(is_ignored_name(part) for part in rel.parts)


def patient_folder(rel: PurePosixPath) -> str | None:
    """The patient folder of an inbox-relative path, or None for a file in the inbox root."""
    return rel.parts[0] if len(rel.parts) > 1 else None


def display(rel: PurePosixPath | str) -> str:
    """A path made safe for one log line: control characters and non-printables escaped."""
    text = str(rel)
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def valid_text(text: str) -> str:
    """`text` as valid Unicode: bytes of a name that were not UTF-8 (kept by Python as lone
    surrogates) become U+FFFD. For what is sent to an EHR; paths on disk keep their bytes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
