"""Log lines for journald: one event per line, `key=value`, nothing that identifies a patient.

Patient ids and file paths are logged only as a short keyed hash (HMAC-SHA256 with a key kept in
the state folder), so two log lines about the same file can be correlated without the log itself
holding PHI. Document content, secrets and tokens are never passed to the logger.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
import warnings
from pathlib import Path

from ingestd.observe.statefiles import read_or_create

LOGGER_NAME = "ingestd"
_KEY_FILE = "log.key"


class Masker:
    """Turns identifiers into stable short tokens, e.g. `p:3fa9c1d2e0`."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, prefix: str, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return f"{prefix}:{digest.hexdigest()[:10]}"

    def patient(self, patient_id: str) -> str:
        return self("p", patient_id)

    def path(self, rel: object) -> str:
        return self("f", str(rel))


def load_masker(state_dir: Path) -> Masker:
    """The masking key from the state folder, created on first use."""
    return Masker(read_or_create(state_dir / _KEY_FILE, lambda: secrets.token_bytes(32)))


def _quote(value: object) -> str:
    text = str(value)
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if not text or any(ch in text for ch in ' "=\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log one event: `event=NAME key=value ...` (values quoted when they need it)."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, " ".join(parts))


def get_logger(component: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}" if component else LOGGER_NAME)


class _Formatter(logging.Formatter):
    """ingestd's own lines as they are; anything else reduced to where it came from.

    Libraries log URLs (which hold patient ids) and warnings quote paths (which hold patient
    folder names), so their text never reaches the log.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.name == LOGGER_NAME or record.name.startswith(LOGGER_NAME + "."):
            return f"{record.levelname} {record.getMessage()}"
        return f"{record.levelname} event=library_message logger={_quote(record.name)}"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    event(
        logging.getLogger(LOGGER_NAME),
        logging.WARNING,
        "python_warning",
        category=category.__name__,
        module=os.path.basename(filename),
        line=lineno,
    )


def setup(level: str = "INFO", stream: object = None) -> None:
    """Send log lines to stderr as `LEVEL event=...` (journald adds the time)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(level)
    warnings.showwarning = _show_warning
