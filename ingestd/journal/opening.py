"""Which journal to open: the SQLite file at `paths.state`, or the fleet's PostgreSQL database
when the config names one (`journal: {url: …}`)."""

from __future__ import annotations

from pathlib import Path

from ingestd.journal.interface import JournalLike
from ingestd.journal.pglink import Link, SharedJournal
from ingestd.journal.store import Journal


def open_journal(
    state: Path, shared: SharedJournal | None, instance: str | None = None
) -> JournalLike:
    """The journal to use; `instance` registers this daemon in a shared one (None: a command,
    which sees and acts on the whole fleet)."""
    if shared is None:
        return Journal(state)
    from ingestd.journal.postgres import PostgresJournal

    return PostgresJournal(shared, instance)


def probe(shared: SharedJournal) -> str:
    """Connect once and ask the server something (`ingestd check --online`); its version."""
    link = Link(shared)
    try:
        found, _ = link.run("SHOW server_version", (), wait=False)
    finally:
        link.close()
    return f"{link.where} (PostgreSQL {found[0][0]})"
