"""Nymbl target: OAuth2 client-credentials token, multipart upload, OData look-up.

Owns Nymbl's option names, its defaults (five types, 25 MiB), its digits-only patient ids, the
token cache, and the request shapes of "Uploading and Downloading Documents". One `send` is one
POST, preceded by a token request only when no valid token is cached; retries live elsewhere.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from ingestd.targets.answers import created_id, document_id, json_object, raise_for_outcome
from ingestd.targets.base import Fetched, TransientError, Upload
from ingestd.targets.bodies import CHUNK, StreamingBody, file_chunks
from ingestd.targets.http import DEFAULTS, HttpTarget
from ingestd.targets.lookup import (
    Candidate,
    check_order,
    in_window,
    stored_at,
    streamed_sha256,
)
from ingestd.targets.oauth2 import TOKEN_AUTH_MODES, TokenSource
from ingestd.targets.settings import CommonSettings
from ingestd.targets.transport import transport_errors

PAGE_SIZE = 100
MAX_PAGES = 1000

_DIGITS = re.compile(r"[0-9]+")


def validate_patient_id(patient_id: str) -> str | None:
    """An error message (never quoting the id) or None when Nymbl can take this patient id."""
    if _DIGITS.fullmatch(patient_id):
        return None
    return (
        "the patient id is not in a form Nymbl takes: expected digits only (a Nymbl patient number)"
    )


def validate_options(options: Mapping[str, str]) -> dict[str, str]:
    problems: dict[str, str] = {}
    if options.get("token_auth", "auto") not in TOKEN_AUTH_MODES:
        problems["token_auth"] = "token_auth must be one of: " + ", ".join(TOKEN_AUTH_MODES)
    return problems


class NymblTarget(HttpTarget):
    """One Nymbl tenant: multipart uploads with a bearer token and an API key."""

    kind = "nymbl"
    required = frozenset({"base_url", "api_key", "token_url", "client_id", "client_secret"})
    optional = frozenset({"token_auth", "scope"})
    default_accept = frozenset(
        {
            "application/pdf",
            "image/png",
            "image/jpeg",
            "image/tiff",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        }
    )
    default_max_bytes = 25 * 1024 * 1024
    validate_patient_id = staticmethod(validate_patient_id)
    validate_options = staticmethod(validate_options)

    def __init__(
        self,
        name: str,
        common: CommonSettings = DEFAULTS,
        *,
        base_url: str,
        api_key: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        token_auth: str | None = None,  # None: "auto"
        scope: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        client_auth = token_auth or "auto"
        if client_auth not in TOKEN_AUTH_MODES:
            raise ValueError("token_auth must be one of: " + ", ".join(TOKEN_AUTH_MODES))
        super().__init__(name, common)
        self._base_url = base_url.rstrip("/")
        self._origin = urlsplit(self._base_url)[:2]
        self._api_key = api_key
        self._tokens = TokenSource(
            self._session,
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth,
            scope=scope or None,
            timeout_seconds=self.timeout_seconds,
            clock=clock,
        )

    def send(self, upload: Upload) -> str:
        what = f"{self.name} upload"
        token, _fresh = self._tokens.get()
        fields = []
        if upload.doc_type:
            fields.append(("document_type", upload.doc_type))
        fields.append(("description", upload.fields.get("description") or upload.title))
        body = MultipartBody(upload, fields)
        response = self._post(
            f"{self._patient_url(upload)}/Documents", body, what, self._auth(token)
        )
        if response.status_code != 401:
            self._tokens.accepted(token)
        elif not self._tokens.refused(token):
            # Revoked, rotated or expired early: one new token and one resend decide.
            raise TransientError(
                f"{what}: HTTP 401; fetching a new token and sending once more",
                401,
                retry_after=0.0,
            )
        raise_for_outcome(response, what, _redact(upload))
        return created_id(response, what)

    def find(self, upload: Upload) -> str | None:
        """The patient's documents of our size, stored since we could have sent this one, are
        candidates; the one whose `$value` has our SHA-256 is ours. The name only orders them:
        an EHR may normalise it, and a parser may have read it differently."""
        redact = _redact(upload)
        try:
            candidates = self._candidates(upload, redact, use_filter=True)
        except _FilterRefused:
            candidates = self._candidates(upload, redact, use_filter=False)
        for doc_id in check_order(candidates):
            if self._same_content(upload, doc_id, [*redact, doc_id]):
                return doc_id
        return None

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        """The document's metadata (does it name this patient?), then `$value`, streamed and
        hashed a chunk at a time."""
        what = f"{self.name} verify"
        redact = [patient_id, document_id]
        document = f"{self._base_url}/Patients({quote(patient_id, safe='')})"
        document += f"/Documents({quote(document_id, safe='')})"
        response = self._get(document, what)
        if response.status_code == 404:
            return None
        raise_for_outcome(response, what, redact)
        said = json_object(response, what).get("patient_id")
        other = said is not None and not _same_number(str(said), patient_id)
        value = self._value_digest(f"{document}/$value", what, redact)
        if value is None:
            return None
        return Fetched(value[0], value[1], other_patient=other)

    def _value_digest(
        self, url: str, what: str, redact: Collection[str], limit: int | None = None
    ) -> tuple[int, str] | None:
        """(size, SHA-256) of a document's `$value`, streamed a chunk at a time; None when the
        EHR has no such document, or it holds more than `limit` bytes (not read further)."""
        response = self._get(url, what, stream=True)
        try:
            if response.status_code == 404:
                return None
            raise_for_outcome(response, what, redact)
            with transport_errors(what, self.timeout_seconds):
                return streamed_sha256(response.iter_content(CHUNK), limit)
        finally:
            response.close()

    def _auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "x-api-key": self._api_key}

    def _patient_url(self, upload: Upload) -> str:
        return f"{self._base_url}/Patients({quote(upload.patient_id, safe='')})"

    def _get(self, url: str, what: str, *, stream: bool = False) -> requests.Response:
        """GET with the bearer token; a 401 is retried once with a new token."""
        response: requests.Response | None = None
        for _ in range(2):
            token, _fresh = self._tokens.get()
            response = self._get_once(url, what, self._auth(token), stream=stream)
            if response.status_code != 401:
                self._tokens.accepted(token)
                return response
            if self._tokens.refused(token):
                return response
            response.close()
        assert response is not None
        return response

    def _candidates(
        self, upload: Upload, redact: list[str], *, use_filter: bool
    ) -> list[Candidate]:
        """The patient's documents of this size in the time window, over every page."""
        what = f"{self.name} look-up"
        documents = f"{self._patient_url(upload)}/Documents"
        query = ""
        if use_filter:
            condition = f"file_size_bytes eq {upload.size}"
            query = f"$filter={quote(condition, safe='')}&"
        found: list[Candidate] = []
        seen_links: set[str] = set()
        skip = 0
        url = f"{documents}?{query}$top={PAGE_SIZE}&$skip={skip}"
        for _ in range(MAX_PAGES):
            response = self._get(url, what)
            if response.status_code == 400 and use_filter and skip == 0 and not seen_links:
                raise _FilterRefused
            if response.status_code == 404:
                return found
            raise_for_outcome(response, what, redact)
            payload = json_object(response, what)
            page = payload.get("value")
            if not isinstance(page, list):
                raise TransientError(f"{what}: HTTP {response.status_code} without a value list")
            found.extend(_candidates_in(page, upload))
            next_link = payload.get("@odata.nextLink")
            if isinstance(next_link, str) and next_link:
                url = urljoin(url, next_link)
                # Our bearer token and API key go only to the configured API.
                if urlsplit(url)[:2] != self._origin or url in seen_links:
                    return found
                seen_links.add(url)
                continue
            if len(page) != PAGE_SIZE:
                # A short page is the last; a longer one means the server ignored $top.
                return found
            skip += PAGE_SIZE
            url = f"{documents}?{query}$top={PAGE_SIZE}&$skip={skip}"
        return found

    def _same_content(self, upload: Upload, doc_id: str, redact: Collection[str]) -> bool:
        what = f"{self.name} look-up"
        url = f"{self._patient_url(upload)}/Documents({quote(doc_id, safe='')})/$value"
        return self._value_digest(url, what, redact, limit=upload.size) == (
            upload.size,
            upload.sha256,
        )


class _FilterRefused(Exception):
    """The server answered 400 to our $filter: list without it and filter here."""


def _candidates_in(page: list[Any], upload: Upload) -> list[Candidate]:
    found: list[Candidate] = []
    for item in page:
        if not isinstance(item, dict):
            continue
        size = item.get("file_size_bytes")
        if size is not None and str(size) != str(upload.size):
            continue
        when = stored_at(item.get("uploaded_at"))
        if not in_window(when, upload.not_before):
            continue
        doc_id = document_id(item.get("id"))
        if doc_id is not None:
            found.append(Candidate(doc_id, item.get("file_name") == upload.file_name, when))
    return found


def _same_number(said: str, asked: str) -> bool:
    """`0042` and `42` are the same Nymbl patient; other text is compared as it is."""
    if _DIGITS.fullmatch(said) and _DIGITS.fullmatch(asked):
        return int(said) == int(asked)
    return said == asked


def _redact(upload: Upload) -> list[str]:
    return [upload.patient_id, upload.file_name, upload.title]


def quote_form_name(value: str) -> str:
    """A multipart field name as HTML5 forms send it: raw UTF-8, three characters escaped.
    Only for our own ASCII field names; a file name goes through `filename_params`."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# Printable ASCII that every parser reads back from a quoted `filename` as it was sent.
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - set('"\\%')


def _quoted_filename(name: str) -> str:
    """The inside of `filename="…"`: `\\` and `"` escaped as RFC 9110 quoted-string pairs
    (Werkzeug, python-multipart and busboy all undo them; the `%22` browsers write for `"` is
    undone by Werkzeug alone), control characters as `%XX` (a raw CR or LF would end the header;
    browsers write those two the same way), everything else raw UTF-8."""
    out: list[str] = []
    for char in name:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"%{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def filename_params(name: str) -> str:
    """The Content-Disposition parameters naming the file: `filename="…"`, and, when the name
    holds anything but plain printable ASCII, `filename*=UTF-8''…` (RFC 8187) after it.

    RFC 7578 4.2 says not to send `filename*`, and parsers that follow it (python-multipart)
    ignore it and read `filename`. Others prefer it: busboy (multer) reads `filename` as Latin-1
    unless told otherwise and so garbles raw UTF-8; Werkzeug turns a literal `%22` in `filename`
    into `"`. From `filename*`, they get the exact name. See README, "The two EHR APIs".
    """
    plain = f'filename="{_quoted_filename(name)}"'
    if all(char in _PLAIN for char in name):
        return plain
    extended = "filename*=UTF-8''" + quote(name, safe="", errors="surrogateescape")
    if name.endswith("\\"):
        # python-multipart finds where a parameter ends by counting quotes, and takes the `\\"`
        # that ends this one for an escaped quote: read last, it is whole. Werkzeug, which
        # takes the last of the two, reads this one right too (unless it holds a literal %22).
        return f"{extended}; {plain}"
    # RFC 6266's order; Werkzeug takes the last of the two, busboy `filename*` wherever it is.
    return f"{plain}; {extended}"


class MultipartBody(StreamingBody):
    """multipart/form-data: the text `fields` in order, then the file as `file_field`."""

    def __init__(
        self,
        upload: Upload,
        fields: Sequence[tuple[str, str]],
        file_field: str = "file",
        boundary: str | None = None,
    ) -> None:
        self.boundary = boundary or f"ingestd-{secrets.token_hex(16)}"
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        dash = f"--{self.boundary}\r\n"
        head = bytearray()
        for name, value in fields:
            disposition = f'form-data; name="{quote_form_name(name)}"'
            head += f"{dash}Content-Disposition: {disposition}\r\n\r\n".encode()
            head += value.encode("utf-8", "surrogateescape") + b"\r\n"
        mime = upload.mime if upload.mime.isprintable() else "application/octet-stream"
        head += (
            f'{dash}Content-Disposition: form-data; name="{quote_form_name(file_field)}"; '
            f"{filename_params(upload.file_name)}\r\n"
            f"Content-Type: {mime}\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        super().__init__(len(head) + upload.size + len(tail), self._gen(upload, bytes(head), tail))

    @staticmethod
    def _gen(upload: Upload, head: bytes, tail: bytes) -> Iterator[bytes]:
        yield head
        yield from file_chunks(upload)
        yield tail
