"""The status page as the daemon runs it: the page's own read-only journal connection, its view
of the daemon's live state, and its Retry button wired to `ingestd retry`'s function.

The listener is bound once, at start; a reload may change the password, the user and the
refresh time, while a new `listen` (or no `status_page:` any more) takes a restart, logged once:
until then the page keeps the last settings it applied for the address it is bound to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ingestd.config.statuspage import StatusPageConfig
from ingestd.filing.putback import retry_one
from ingestd.journal.reader import JournalReader, JournalView, SharedJournalView
from ingestd.observe.logs import event
from ingestd.web.auth import Csrf, Gate
from ingestd.web.server import Site, StatusPageServer, start_page
from ingestd.web.view import Gatherer, ViewCache

if TYPE_CHECKING:
    from ingestd.daemon.loop import Daemon

log = logging.getLogger("ingestd.status_page")


@dataclass
class _InForce:
    settings: StatusPageConfig
    warned: bool = False  # a change that needs a restart, logged once


@dataclass
class StatusPage:
    server: StatusPageServer
    reader: JournalView

    def stop(self) -> None:
        self.server.stop()
        self.reader.close()


def start_status_page(daemon: Daemon) -> StatusPage | None:
    first = daemon.config.status_page
    if first is None:
        return None
    in_force = _InForce(first)

    def settings() -> StatusPageConfig:
        """The newest config's settings while it keeps the address the page is bound to."""
        now = daemon.config.status_page
        if now is not None and now.listen == first.listen:
            in_force.settings = now
        elif not in_force.warned:
            in_force.warned = True
            why = "listen changed" if now is not None else "status_page removed"
            event(log, logging.WARNING, "status_page_needs_restart", why=why)
        return in_force.settings

    def retry(receipt: Path) -> None:
        back = retry_one(daemon.config, daemon.journal, receipt, wait=False)  # never hang
        where = daemon.masker.path(back.inbox) if back is not None else None
        event(log, logging.INFO, "status_page_retry", file=where)

    reader: JournalView = (
        SharedJournalView(daemon.journal)
        if daemon.journal.shared
        else JournalReader(daemon.config.paths.state)
    )
    site = Site(
        settings=settings,
        gate=Gate(first.user, first.password),
        views=ViewCache(Gatherer(lambda: daemon.config, reader, daemon.snapshot)),
        retry=retry,
        csrf=Csrf(),
    )
    server = start_page(first.listen, site)
    if server is None:
        reader.close()
        return None
    return StatusPage(server, reader)
