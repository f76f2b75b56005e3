"""The journal's SQL: the tables, and the migrations from each older schema version."""

from __future__ import annotations

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    source BLOB NOT NULL,           -- inbox-relative path, bytes
    work BLOB NOT NULL UNIQUE,      -- inbox-relative path inside the work folder, bytes
    state TEXT NOT NULL,
    size INTEGER,
    sha256 TEXT,
    format TEXT,
    patient_id TEXT,
    decision TEXT,                  -- JSON: the rule's decision, kept across reloads
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome_unknown INTEGER NOT NULL DEFAULT 0,
    document_id TEXT,
    error TEXT,                     -- JSON {kind, message, http_status?}
    dest BLOB,                      -- path relative to done/ or failed/, once chosen
    history TEXT,                   -- JSON list of earlier receipts (ingestd retry)
    received_at TEXT NOT NULL,
    finished_at TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_state ON files (state, next_attempt_at);
-- `ingestd verify`: what the EHR was seen to hold, and when (made on every open: no migration).
CREATE TABLE IF NOT EXISTS verified (target TEXT NOT NULL, document_id TEXT NOT NULL,
    sha256 TEXT NOT NULL, verified_at TEXT NOT NULL, PRIMARY KEY (target, document_id, sha256));
"""

# Each step takes a journal from version N to N+1, in one transaction with the version bump.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # Who dropped the file (its owner when claimed), for the receipt's audit fields.
        "ALTER TABLE files ADD COLUMN owner_uid INTEGER",
        # Receipts of files `ingestd retry` put back, until the file is claimed again.
        "CREATE TABLE IF NOT EXISTS retried (source BLOB NOT NULL, sha256 TEXT NOT NULL, "
        "receipts TEXT NOT NULL, PRIMARY KEY (source, sha256))",
    ),
    2: (
        # When the last upload request began: an unknown outcome is settled only after the EHR
        # has had time to finish storing what it may still be working on.
        "ALTER TABLE files ADD COLUMN sent_at REAL",
    ),
    3: (
        # A file sent as a PDF made from it (issue 14): what was made, committed before the
        # first send so a resumed upload sends the same bytes and the look-up compares them.
        # `sha256`, `size` and `format` stay those of the source file.
        "ALTER TABLE files ADD COLUMN converted_format TEXT",
        "ALTER TABLE files ADD COLUMN converted_sha256 TEXT",
        "ALTER TABLE files ADD COLUMN converted_size INTEGER",
        "ALTER TABLE files ADD COLUMN converted_pages INTEGER",
    ),
}
