"""The FHIR R4 (4.0.1) JSON the sandbox speaks: OperationOutcome for every error, search Bundles,
its CapabilityStatement, a stored document as a DocumentReference, and the checks a posted
DocumentReference must pass (as strict as a real server on what ingestd sends).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ingestd.sandbox.store import StoredDocument
from ingestd.sandbox.wire import Abort, Response

FHIR_JSON = "application/fhir+json; charset=utf-8"
FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
STATUSES = frozenset({"current", "superseded", "entered-in-error"})
# Every element of an R4 DocumentReference: anything else is refused, as strict servers do.
ELEMENTS = frozenset(
    {
        "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
        "extension", "modifierExtension", "masterIdentifier", "identifier", "status",
        "docStatus", "type", "category", "subject", "date", "author", "authenticator",
        "custodian", "relatesTo", "description", "securityLabel", "content", "context",
    }
)  # fmt: skip
ATTACHMENT = frozenset(
    {"id", "extension", "contentType", "language", "data", "url", "size", "hash", "title",
     "creation"}
)  # fmt: skip
# R4 `instant`/`dateTime` with a time: a time zone is required.
_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def fhir_json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=True).encode("utf-8")
    return Response(status, body, FHIR_JSON, dict(headers or {}))


def outcome(status: int, code: str, diagnostics: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def refuse(
    status: int, code: str, diagnostics: str, headers: Mapping[str, str] | None = None
) -> Abort:
    """`raise refuse(…)`: an OperationOutcome answer (never echoing patient data)."""
    return Abort(fhir_json(status, outcome(status, code, diagnostics), headers))


_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
          409: "conflict", 412: "duplicate", 413: "too-costly", 415: "not-supported",
          422: "processing", 429: "throttled"}  # fmt: skip


def as_outcome(response: Response) -> Response:
    """An error answered outside the FHIR routes (a fault, a proxy's 413) as an OperationOutcome."""
    if response.status < 400 or response.content_type == FHIR_JSON:
        return response
    try:
        said = json.loads(response.body or b"{}")
    except ValueError:
        said = {}
    message = said.get("message") if isinstance(said, dict) else None
    code = _CODES.get(response.status, "transient" if response.status >= 500 else "invalid")
    text = message if isinstance(message, str) else f"HTTP {response.status}"
    return fhir_json(response.status, outcome(response.status, code, text), response.headers)


def bundle(resources: list[dict[str, Any]], base: str, total: int, next_url: str | None) -> Any:
    entries = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in resources
    ]
    found: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
    if next_url is not None:
        found["link"] = [{"relation": "next", "url": next_url}]
    found["entry"] = entries
    return found


def capability_statement(conditional_create: bool, token_url: str) -> dict[str, Any]:
    oauth = {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": token_url}],
    }
    service = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }
        ]
    }
    documents = {
        "type": "DocumentReference",
        "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}],
        "conditionalCreate": conditional_create,
        "searchParam": [
            {"name": "identifier", "type": "token"},
            {"name": "subject", "type": "reference"},
        ],
    }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-01",
        "kind": "instance",
        "software": {"name": "ingestd sandbox"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {"extension": [oauth], "service": [service]},
                "resource": [
                    documents,
                    {"type": "Binary", "interaction": [{"code": "create"}, {"code": "read"}]},
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                ],
            }
        ],
    }


def representation(doc: StoredDocument, base: str) -> dict[str, Any]:
    """The stored document as the DocumentReference a read returns."""
    resource: dict[str, Any] = json.loads(doc.fields["resource"])
    resource["id"] = doc.id
    resource["meta"] = {"versionId": "1", "lastUpdated": doc.created_at}
    resource["subject"] = {"reference": doc.patient_id}
    attachment = dict(resource["content"][0]["attachment"])
    binary = doc.fields.get("binary")
    if binary:
        attachment["url"] = f"{base}/Binary/{binary}"
    else:
        attachment["data"] = base64.b64encode(doc.content).decode("ascii")
    resource["content"] = [{**resource["content"][0], "attachment": attachment}]
    return resource


def _check_keys(where: str, value: object, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise refuse(400, "structure", f"{where} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise refuse(400, "structure", f"{where}: unknown element(s) {', '.join(unknown)}")
    return value


def checked_document(payload: object) -> dict[str, Any]:
    """The posted DocumentReference, refused with an OperationOutcome where R4 says no."""
    resource = _check_keys("DocumentReference", payload, ELEMENTS)
    if resource.get("resourceType") != "DocumentReference":
        raise refuse(400, "structure", "resourceType must be DocumentReference")
    if resource.get("status") not in STATUSES:
        raise refuse(400, "value", "status must be current, superseded or entered-in-error")
    date = resource.get("date")
    if date is not None and (not isinstance(date, str) or not _INSTANT.fullmatch(date)):
        raise refuse(400, "value", "date must be an instant with a time zone")
    content = resource.get("content")
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        raise refuse(400, "required", "content must hold exactly one attachment here")
    attachment = _check_keys("attachment", content[0].get("attachment"), ATTACHMENT)
    if not isinstance(attachment.get("contentType"), str):
        raise refuse(400, "required", "attachment.contentType is required")
    if ("data" in attachment) == ("url" in attachment):
        raise refuse(400, "invariant", "attachment needs data or url, one of them")
    creation = attachment.get("creation")
    if creation is not None and not (isinstance(creation, str) and _INSTANT.fullmatch(creation)):
        raise refuse(400, "value", "attachment.creation must be a dateTime with a time zone")
    identifiers = resource.get("identifier")
    if identifiers is not None and not (
        isinstance(identifiers, list)
        and all(isinstance(i, dict) and isinstance(i.get("value"), str) for i in identifiers)
    ):
        raise refuse(400, "structure", "identifier must be a list of Identifiers with a value")
    return resource


def decoded_data(attachment: dict[str, Any]) -> bytes:
    data = attachment.get("data")
    if not isinstance(data, str):
        raise refuse(400, "value", "attachment.data must be base64")
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise refuse(400, "value", "attachment.data is not valid base64") from None


def check_size_and_hash(attachment: dict[str, Any], content: bytes) -> None:
    """The attachment's `size` and `hash` (base64 SHA-1) must describe the bytes."""
    size = attachment.get("size")
    if size is not None and size != len(content):
        raise refuse(422, "processing", "attachment.size does not match the data")
    digest = attachment.get("hash")
    sha1 = base64.b64encode(hashlib.sha1(content).digest()).decode("ascii")  # noqa: S324
    if digest is not None and digest != sha1:
        raise refuse(422, "processing", "attachment.hash is not the SHA-1 of the data")


def concept_text(value: object) -> str:
    """A CodeableConcept as the rule wrote it: `system|code|display`, or its text."""
    if not isinstance(value, dict):
        return ""
    codings = value.get("coding")
    if isinstance(codings, list) and codings and isinstance(codings[0], dict):
        first = codings[0]
        parts = [str(first.get("system", "")), str(first.get("code", ""))]
        if first.get("display"):
            parts.append(str(first["display"]))
        return "|".join(parts)
    text = value.get("text")
    return text if isinstance(text, str) else ""


def identifier_tokens(resource: dict[str, Any]) -> list[str]:
    identifiers = resource.get("identifier") or []
    return [f"{i.get('system', '')}|{i['value']}" for i in identifiers]
