"""`ingestd sandbox`: a local stand-in EHR speaking the Leyr and Nymbl document APIs on loopback.

As strict as the published API documents (so client bugs show up), with fault injection, an
in-process Python API for tests and an HTTP control plane (/_sandbox) for other processes.
"""

from __future__ import annotations

from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS
from ingestd.sandbox.faults import Fault
from ingestd.sandbox.instance import Sandbox, serve_forever
from ingestd.sandbox.store import RequestRecord, StoredDocument

__all__ = [
    "SANDBOX_CREDENTIALS",
    "Fault",
    "RequestRecord",
    "Sandbox",
    "StoredDocument",
    "serve_forever",
]
