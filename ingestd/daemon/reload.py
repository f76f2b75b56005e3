"""Reloading the config: noticing that the file changed (looked at every 2 s, and on SIGHUP),
loading the new one, and refusing it — logged as FILE:LINE:COL, the old one kept — when it is
invalid. Changing `paths` needs a restart: a reload keeps the old ones and says so."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ingestd.config.load import load_config
from ingestd.config.model import Config, ConfigError
from ingestd.observe.logs import event

log = logging.getLogger("ingestd.daemon")

CONFIG_CHECK_EVERY = 2.0


class ConfigWatch:
    """Whether the config file changed since it was last loaded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self._checked_at = time.monotonic()

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self._checked_at + CONFIG_CHECK_EVERY:
            return False
        self._checked_at = now
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def loading(self) -> None:
        """The file is about to be loaded: what it is now is what was loaded."""
        self._stamp = _stamp(self.path)


def load_new(current: Config) -> Config | None:
    """The config file as it is now, or None (logged) when it is invalid."""
    try:
        config = load_config(current.file)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("event=reload_refused problem=%s", str(problem).replace("\n", " "))
        event(
            log,
            logging.ERROR,
            "reload_refused",
            problems=len(exc.problems),
            action="the previous config keeps running; fix the file and reload again",
        )
        return None
    if config.paths != current.paths:
        event(log, logging.WARNING, "reload_paths_ignored", action="changing paths needs a restart")
        config = dataclasses.replace(config, paths=current.paths)
    return config


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
