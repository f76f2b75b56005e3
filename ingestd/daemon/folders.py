"""The inbox's folders as the daemon sees them: watched (the observer), polled (folders on network
shares, listed every few seconds), and paused while they do not answer.

A share that dies answers with ENOTCONN, EIO, ESTALE …; a clean unmount leaves a bare mount
point without our work folder. Both are one path: the folder (or the whole inbox) is paused with
one ERROR line, retried with a backoff, and listed again when it answers (`on_resume`). The
daemon and the other folders keep running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import PurePosixPath

from ingestd.config.model import Config
from ingestd.inbox.availability import Availability
from ingestd.inbox.claims import Claimer
from ingestd.inbox.scan import INBOX_ROOT, scan
from ingestd.inbox.watch import Hints, Observation
from ingestd.observe.logs import Masker, event

log = logging.getLogger("ingestd.daemon")


class Folders:
    def __init__(
        self,
        config: Callable[[], Config],
        claimer: Claimer,
        masker: Masker,
        hints: Hints,
        on_resume: Callable[[PurePosixPath], None],  # list this folder (INBOX_ROOT: all) again
        on_inbox_lost: Callable[[], None],
        notice: Callable[[PurePosixPath], None],  # a file in a polled folder
    ) -> None:
        self._config = config
        self.claimer = claimer
        self.masker = masker
        self.on_resume = on_resume
        self.on_inbox_lost = on_inbox_lost
        self.notice = notice
        first = config()
        self.observation = Observation(first.paths.inbox, hints, poll=first.watch.poll)
        self.availability = Availability(describe=self._describe)
        self._inbox_was_mount = os.path.ismount(first.paths.inbox)
        self._polled: set[PurePosixPath] = set()
        claimer.on_unavailable = self.failed

    def _describe(self, rel: PurePosixPath) -> str:
        return "." if rel == INBOX_ROOT else self.masker.path(rel)

    # --- watching --------------------------------------------------------------------------

    def watch(self) -> bool:
        """(Re)start the inbox observer if it is not running; True when it was (re)started.
        An inbox that does not answer is paused rather than watched."""
        restarted = self.observation.ensure_alive()
        failure = self.observation.unavailable
        if failure is not None:
            self.observation.unavailable = None
            self._inbox_failed(failure)
        return restarted

    def saw_folder(self, rel: PurePosixPath) -> None:
        """Remember folders that must be polled (a share written by other machines)."""
        if self._config().watch.poll_for(rel) and not any(p in self._polled for p in rel.parents):
            self._polled.add(rel)

    # --- pausing and resuming --------------------------------------------------------------

    def failed(self, rel: PurePosixPath, exc: OSError) -> None:
        """A folder did not answer: pause it, or the whole inbox when that is what died."""
        if self.availability.is_down(rel):
            return
        if rel == INBOX_ROOT or not self.inbox_answers():
            if rel == INBOX_ROOT:
                self._inbox_failed(exc)
            return
        self.availability.failed(rel, exc)

    def _inbox_failed(self, exc: OSError | None) -> None:
        if exc is None or isinstance(exc, FileNotFoundError):
            reason = "the inbox folder is missing (a share that is not mounted?)"
            self.availability.failed(INBOX_ROOT, exc, reason)
        else:
            self.availability.failed(INBOX_ROOT, exc)
        self.on_inbox_lost()  # each scan would fail folder by folder; one follows the return

    def inbox_answers(self) -> bool:
        """Look at the inbox (its work folder: a clean unmount leaves a bare mount point);
        pause it or resume it as it answers."""
        try:
            present = self.claimer.work_folder_present()
        except OSError as exc:
            self._inbox_failed(exc)
            return False
        if not present and not self._work_folder_remade():
            self._inbox_failed(None)
            return False
        if not self._inbox_was_mount:  # a share mounted after start-up counts too
            self._inbox_was_mount = os.path.ismount(self._config().paths.inbox)
        if self.availability.answered(INBOX_ROOT):
            self.on_resume(INBOX_ROOT)
        return True

    def _work_folder_remade(self) -> bool:
        """Make the work folder again when the inbox is there but was emptied (removed and
        made anew); never on a bare mount point: an inbox that was a mount point at start-up
        and is not one now is a share that is not mounted."""
        inbox = self._config().paths.inbox
        try:
            if not inbox.is_dir() or (self._inbox_was_mount and not os.path.ismount(inbox)):
                return False
            self.claimer.prepare()
        except OSError:
            return False
        event(log, logging.WARNING, "work_folder_made", action="the inbox had been emptied")
        return True

    def check(self) -> None:
        """Every few seconds: is the inbox there, do paused folders answer again, and list the
        folders that are polled."""
        availability = self.availability
        if availability.inbox_down() and INBOX_ROOT not in availability.due():
            return
        if not self.inbox_answers():
            return
        for rel in availability.due():
            try:
                with os.scandir(self._config().paths.inbox / rel):
                    pass
            except (FileNotFoundError, NotADirectoryError):
                availability.forget(rel)  # removed: nothing to wait for
            except OSError as exc:
                availability.failed(rel, exc)
            else:
                if availability.answered(rel):
                    self.on_resume(rel)
        self.poll()

    def poll(self) -> None:
        """inotify sees nothing that other clients of an NFS/SMB mount write: list those
        folders every few seconds instead."""
        inbox, watch = self._config().paths.inbox, self._config().watch
        for folder in sorted(self._polled):
            if self.availability.is_down(folder):
                continue  # retried with a backoff by check()
            try:
                present = (inbox / folder).is_dir()
            except OSError as exc:
                self.failed(folder, exc)
                continue
            if not watch.poll_for(folder) or not present:
                self._polled.discard(folder)  # gone, or no longer polled after a reload
                continue
            for rel in scan(inbox, folder, on_error=self.failed):
                self.notice(rel)
            if self.availability.inbox_down():
                return

    # --- what the loop asks ----------------------------------------------------------------

    def inbox_down(self) -> bool:
        return self.availability.inbox_down()

    def is_down(self, rel: PurePosixPath) -> bool:
        return self.availability.is_down(rel)

    def down(self) -> int:
        """How many folders (the inbox counting as one) do not answer."""
        return len(self.availability)
