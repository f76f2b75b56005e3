"""The journal: one row per claimed file and the state it has reached (SQLite, or PostgreSQL
shared by a fleet: see interface.py).

It is the truth about every file ingestd has taken out of the inbox. Each state is committed
before the side effect that follows it, so after a crash every unfinished row says exactly what
is left to do:

    claiming → claimed → uploading → uploaded(document_id) → done
                      ↘ rejected(error) ─────────────────→ failed

`claiming`: the rename into the work folder may or may not have happened (a running daemon
hands the row to a worker as it is; after a crash the work folder says which); `claimed`: the
rule's decision is recorded and the file waits to be sent (a file sent at once skips it: its
decision is staged and written with `uploading`, see staging.py); `uploading`: a request
may have reached the EHR, so the outcome is unknown until the EHR is asked; `uploaded` and
`rejected`: only the move to done/ or failed/ and the receipt are left (a shared journal writes
the `done`/`failed` that follows in batches, see finishing.py).

Files still in the inbox are not rows: the inbox itself is their truth, and a scan after a
restart finds them again. Paths are stored as bytes so odd names survive byte for byte.
"""

from ingestd.journal.interface import AlreadyClaimed, ClaimLost, JournalLike, JournalUnavailable
from ingestd.journal.opening import open_journal, probe
from ingestd.journal.pglink import JournalRefused, JournalUnreachable, SharedJournal
from ingestd.journal.rows import ACTIVE_STATES, FINAL_STATES, Row
from ingestd.journal.schema import JournalError
from ingestd.journal.store import Journal

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "AlreadyClaimed",
    "ClaimLost",
    "Journal",
    "JournalError",
    "JournalLike",
    "JournalRefused",
    "JournalUnavailable",
    "JournalUnreachable",
    "Row",
    "SharedJournal",
    "open_journal",
    "probe",
]
