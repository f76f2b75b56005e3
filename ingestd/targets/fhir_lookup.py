"""Reading FHIR DocumentReferences back: their subject, the bytes their attachment holds (inline
`data`, or the `Binary` its `url` names, streamed), and the candidates of a search for a
document already stored (by size and time, its SHA-1 and file name as hints).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ingestd.targets.answers import document_id, raise_for_outcome
from ingestd.targets.base import TransientError, Upload
from ingestd.targets.bodies import CHUNK
from ingestd.targets.lookup import (
    Candidate,
    base64_sha256,
    in_window,
    stored_at,
    streamed_sha256,
)
from ingestd.targets.transport import transport_errors

StreamGet = Callable[[str, str, dict[str, str]], requests.Response]
RAW_ACCEPT = {"Accept": "application/octet-stream, */*;q=0.5"}


def attachment_of(resource: dict[str, Any]) -> dict[str, Any]:
    content = resource.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        attachment = content[0].get("attachment")
        if isinstance(attachment, dict):
            return attachment
    return {}


def subject_of(resource: dict[str, Any]) -> str | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return reference if isinstance(reference, str) else None


def same_reference(said: str | None, ours: str, base_url: str) -> bool:
    """`Patient/1` and `<base>/Patient/1` (and a version suffix) name the same patient."""
    if said is None:
        return False
    said = said.removeprefix(base_url.rstrip("/") + "/").split("/_history/")[0]
    return said == ours


def documents_in(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The DocumentReferences a search Bundle matched."""
    entries = bundle.get("entry")
    found = []
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "DocumentReference":
            found.append(resource)
    return found


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def candidates_in(resources: list[dict[str, Any]], upload: Upload, sha1: str) -> list[Candidate]:
    """Documents that may hold our bytes: our size (or none said), stored in the window."""
    found: list[Candidate] = []
    for resource in resources:
        attachment = attachment_of(resource)
        size = attachment.get("size")
        if size is not None and size != upload.size:
            continue
        meta = resource.get("meta")
        when = stored_at(meta.get("lastUpdated") if isinstance(meta, dict) else None)
        doc_id = document_id(resource.get("id"))
        if doc_id is None or resource.get("status") == "entered-in-error":
            continue
        if not in_window(when, upload.not_before):
            continue
        hinted = attachment.get("hash") == sha1 or attachment.get("title") == upload.file_name
        found.append(Candidate(doc_id, hinted, when))
    return found


def carries_identifier(resource: dict[str, Any], system: str, value: str) -> bool:
    """Whether the resource lists the identifier `system|value`."""
    listed = resource.get("identifier")
    return any(
        isinstance(found, dict) and found.get("system") == system and found.get("value") == value
        for found in (listed if isinstance(listed, list) else [])
    )


def readable_here(resource: dict[str, Any], base_url: str) -> bool:
    """Whether the attachment's bytes are inline or on our own server (where our credentials
    may go); a document whose bytes are elsewhere was not stored by us."""
    attachment = attachment_of(resource)
    if isinstance(attachment.get("data"), str):
        return True
    url = attachment.get("url")
    return isinstance(url, str) and same_origin(urljoin(base_url.rstrip("/") + "/", url), base_url)


def same_origin(url: str, base_url: str) -> bool:
    return urlsplit(url)[:2] == urlsplit(base_url)[:2]


def content_digest(
    resource: dict[str, Any],
    base_url: str,
    get: StreamGet,
    what: str,
    redact: list[str],
    timeout_seconds: float,
    limit: int | None = None,
) -> tuple[int, str] | None:
    """(size, SHA-256) of what the attachment holds; None when it holds nothing we can read
    or more than `limit` bytes."""
    attachment = attachment_of(resource)
    data = attachment.get("data")
    if isinstance(data, str):
        return base64_sha256(data)
    url = attachment.get("url")
    if not isinstance(url, str) or not url:
        return None
    absolute = urljoin(base_url.rstrip("/") + "/", url)
    if not same_origin(absolute, base_url):
        # Our credentials go only to the configured server.
        raise TransientError(f"{what}: the attachment's url is on another server; not followed")
    response = get(absolute, what, RAW_ACCEPT)
    try:
        if response.status_code in (404, 410):
            return None
        raise_for_outcome(response, what, redact)
        with transport_errors(what, timeout_seconds):
            media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if media in ("application/fhir+json", "application/json"):
                # The server answered with the Binary resource: its `data` is the content.
                payload = response.json()
                inner = payload.get("data") if isinstance(payload, dict) else None
                return base64_sha256(inner) if isinstance(inner, str) else None
            return streamed_sha256(response.iter_content(CHUNK), limit)
    finally:
        response.close()
