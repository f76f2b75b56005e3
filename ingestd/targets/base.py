"""What every EHR target offers the pipeline, and the outcomes an upload can have.

A target sends exactly one HTTP request per `send` (plus, for Nymbl, a token request when it has
no valid token). Retrying, backoff and reconciliation live in `ingestd.delivery.retrying`, not
here, so that every target is retried by the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Protocol

from ingestd.content import StreamedDigest


@dataclass(frozen=True)
class Upload:
    """One document to send: its bytes are read with os.pread from `fd`, always from offset 0.

    Its SHA-256 is taken from the bytes a send reads (`known_sha256` when already known), so
    a file is read once, not once to hash and once to send.
    """

    patient_id: str
    file_name: str  # the original file name (non-ASCII kept)
    mime: str  # detected from content
    size: int
    title: str
    doc_type: str
    fields: Mapping[str, str] = field(default_factory=dict)  # description, created_by_id
    fd: int = -1
    # Epoch seconds: no send of this document began earlier (when the file was received). A
    # look-up for an earlier upload skips what the EHR stored well before. None: any time.
    not_before: float | None = None
    # What stays the same for this document across retries and crashes (the claim): a FHIR
    # target derives its conditional-create identifier from it. "": none (each Upload differs).
    key: str = ""
    known_sha256: InitVar[str | None] = None
    digest: StreamedDigest = field(init=False, repr=False, compare=False)

    def __post_init__(self, known_sha256: str | None) -> None:
        object.__setattr__(self, "digest", StreamedDigest(self.fd, known_sha256))

    @property
    def sha256(self) -> str:
        """Hex digest of the whole content (reads what no send has read yet)."""
        return self.digest.hexdigest()

    def read_at(self, offset: int, length: int) -> bytes:
        return self.digest.read_at(offset, length)


@dataclass(frozen=True)
class Fetched:
    """A stored document as the EHR gave it back: its content's size and SHA-256 (hashed as it
    streamed in), and whether the EHR's answer names another patient than the one asked for."""

    size: int
    sha256: str
    other_patient: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a target will not take a document; decided locally, before any request."""

    kind: str  # too_large | unsupported_type | invalid_patient_id
    message: str


class TargetError(Exception):
    """Base for everything `send`, `find` and `fetch` raise; `message` holds no PHI or secret."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class TransientError(TargetError):
    """Worth trying again later: connection errors, timeouts, 408/425/429/5xx, token-endpoint 5xx.

    `sent` is False only when the request certainly never reached the server (connection refused,
    connect timeout, DNS). `outcome_unknown` is True when the server may have stored the document
    (connection lost after sending, read timeout): the EHR must be asked before sending again.
    """

    def __init__(
        self,
        message: str,
        http_status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message, http_status)
        self.retry_after = retry_after
        self.sent = sent
        self.outcome_unknown = outcome_unknown


class PermanentError(TargetError):
    """The EHR refused this document (4xx other than 401/408/425/429): failed/ at once."""

    def __init__(self, message: str, http_status: int | None, kind: str = "rejected") -> None:
        super().__init__(message, http_status)
        self.kind = kind  # rejected | patient_not_found | too_large (413) | unreadable


class AuthError(TargetError):
    """Credentials refused (after one token refresh for Nymbl): the target is misconfigured.

    The target pauses; its files wait. Nothing is moved to failed/. `action` is what the one
    log line tells the operator to do.
    """

    action = "check the target's credentials; files wait until they are accepted"


class CertificateUntrusted(AuthError):
    """The EHR's TLS certificate did not verify: a misconfiguration, not a lost connection.

    Nothing reached the server (the handshake failed), so no request counts as sent.
    """

    sent = False
    action = (
        "set the target's ca_file: to the PEM file of the CA that signed the EHR's certificate "
        "(or REQUESTS_CA_BUNDLE for every target), then reload; files wait until it verifies"
    )


class Target(Protocol):
    """One configured EHR endpoint (`targets.NAME` in the config)."""

    name: str
    kind: str
    max_bytes: int
    accept: frozenset[str]
    timeout_seconds: float  # read timeout of one request

    def refusal(self, upload: Upload) -> Refusal | None:
        """Size, type and patient-id checks; sends nothing (not even a token request)."""
        ...

    def send(self, upload: Upload) -> str:
        """Send the document once; return the EHR's document id or raise a TargetError."""
        ...

    def find(self, upload: Upload) -> str | None:
        """Ask the EHR whether this exact document (size and SHA-256 of its content) is already
        stored; names and titles only say which candidates to check first."""
        ...

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        """Read one stored document of this patient back, hashing its content with bounded
        memory; None when the EHR does not hold that document for that patient (404)."""
        ...

    def close(self) -> None: ...
