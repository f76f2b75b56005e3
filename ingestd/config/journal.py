"""`journal:`: the PostgreSQL database a fleet shares as its journal, checked as FILE:LINE:COL.

`url` is a libpq URL (`postgresql://USER@HOST:PORT/DB`, TLS options such as `?sslmode=
verify-full&sslrootcert=…` as its query); the password goes in `password`, as a secret reference,
never in the URL (a URL is echoed in messages; `password` never is).
"""

from __future__ import annotations

import urllib.parse

from ingestd.journal import SharedJournal
from ingestd.yamlsource import MarkedDict, Report

JOURNAL_KEYS = ("url", "password")
_SCHEMES = ("postgresql", "postgres")


def parse_journal(report: Report, node: MarkedDict) -> SharedJournal | None:
    report.keys(node, "journal", JOURNAL_KEYS, ("url",))
    url = report.string(node, "url", "journal.url")
    password = report.string(node, "password", "journal.password") if "password" in node else None
    if url is None:
        return None
    at = node.value_mark("url")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        report.error(
            at, "journal.url is not a valid URL, e.g. postgresql://ingestd@db:5432/ingestd"
        )
        return None
    if parts.scheme not in _SCHEMES:
        report.error(
            at, "journal.url must start with postgresql://, e.g. postgresql://ingestd@db/ingestd"
        )
        return None
    if parts.password is not None:
        report.error(
            at,
            "journal.url must not hold a password: use journal.password, e.g. "
            "password: ${credential:ingestd-db}",
        )
        return None
    if not parts.path.strip("/"):
        report.error(at, "journal.url must name the database, e.g. postgresql://ingestd@db/ingestd")
        return None
    try:
        import psycopg  # noqa: F401 - only to know that it is there
    except ImportError:
        report.error(
            node.key_mark("url"),
            "a PostgreSQL journal needs psycopg 3: apt install python3-psycopg "
            "(or pip install 'ingestd[postgresql]')",
        )
        return None
    return SharedJournal(url, password)
