"""The sandbox's FHIR R4 server, under /fhir/r4: the CapabilityStatement (`GET /metadata`, open),
Patient read and search by identifier, DocumentReference create (conditional on
`If-None-Exist: identifier=…` unless switched off), read and search (identifier, subject),
Binary create and read. Every other request needs a Bearer token; every error is an
OperationOutcome.

Patients: with `known_patients` None, every `Patient/<id>` exists and every identifier names one
Patient (its id made from the identifier); otherwise only those listed (`Patient/<id>` or
`system|value`). `FhirState.patients` gives identifiers that several Patients share.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl, unquote

from ingestd.sandbox.fhir_resources import (
    FHIR_ID,
    as_outcome,
    bundle,
    capability_statement,
    check_size_and_hash,
    checked_document,
    concept_text,
    decoded_data,
    fhir_json,
    identifier_tokens,
    refuse,
    representation,
)
from ingestd.sandbox.fhir_token import PATH as TOKEN_PATH
from ingestd.sandbox.fhir_token import bearer_ok
from ingestd.sandbox.store import StoredDocument, new_document, new_id
from ingestd.sandbox.wire import (
    Context,
    Endpoint,
    MiB,
    Request,
    Response,
    Route,
    dispatch,
    not_found,
)

PREFIX = "/fhir/r4"
MAX_BODY = 64 * MiB
_SEARCH_PARAMS = {
    "Patient": {"identifier", "_count", "_elements"},
    "DocumentReference": {"identifier", "subject", "patient", "_count", "_offset"},
}

__all__ = ["PREFIX", "as_outcome", "route"]


def route(method: str, path: str) -> Route:
    """`path` is what follows /fhir/r4."""
    parts = [unquote(p) for p in path.split("/")[1:]]
    if parts == ["metadata"]:
        return dispatch("fhir", method, {"GET": Endpoint("metadata", _metadata)})
    if len(parts) == 1 and parts[0] in ("Patient", "DocumentReference", "Binary"):
        return dispatch("fhir", method, _TYPE_ENDPOINTS[parts[0]])
    if len(parts) == 2 and parts[0] in ("Patient", "DocumentReference", "Binary"):
        kind, handler = _READS[parts[0]]

        def read(ctx: Context, req: Request) -> Response:
            return handler(ctx, req, parts[1])

        return dispatch("fhir", method, {"GET": Endpoint(kind, read)})
    return not_found("fhir")


def _authorized(ctx: Context, req: Request) -> None:
    if not bearer_ok(ctx, req):
        challenge = {"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'}
        raise refuse(401, "login", "a valid Bearer access token is required", challenge)


def _metadata(ctx: Context, req: Request) -> Response:
    return fhir_json(200, capability_statement(ctx.fhir.conditional_create, ctx.url + TOKEN_PATH))


def _query(req: Request, resource_type: str) -> dict[str, str]:
    pairs = parse_qsl(req.query, keep_blank_values=True)
    unknown = sorted({k for k, _ in pairs} - _SEARCH_PARAMS[resource_type])
    if unknown:
        raise refuse(400, "not-supported", f"unknown search parameter(s): {', '.join(unknown)}")
    return dict(pairs)


# --- patients ------------------------------------------------------------------------------


def _patient_exists(ctx: Context, reference: str) -> bool:
    pid = reference.removeprefix("Patient/")
    if ctx.patient_exists(reference, pid):
        return True
    # The Patients an identifier search finds exist too.
    known = ctx.known_patients or frozenset()
    found = {_identified(k) for k in known if "|" in k}
    found.update(p for ids in ctx.fhir.patients.values() for p in ids)
    return pid in found


def _identified(identifier: str) -> str:
    """The id of the one Patient a known identifier names."""
    return "pat-" + hashlib.sha256(identifier.encode()).hexdigest()[:12]


def _patients_with(ctx: Context, identifier: str) -> list[str]:
    shared = ctx.fhir.patients.get(identifier)
    if shared is not None:
        return list(shared)
    if not ctx.patient_exists(identifier):
        return []
    return [_identified(identifier)]


def _patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "active": True}


def _search_patients(ctx: Context, req: Request) -> Response:
    _authorized(ctx, req)
    identifier = _query(req, "Patient").get("identifier")
    if not identifier:
        raise refuse(400, "required", "search by identifier only")
    identifier = identifier.replace("\\,", ",").replace("\\$", "$").replace("\\\\", "\\")
    ids = _patients_with(ctx, identifier)
    return fhir_json(200, bundle([_patient(i) for i in ids], ctx.url + PREFIX, len(ids), None))


def _read_patient(ctx: Context, req: Request, pid: str) -> Response:
    _authorized(ctx, req)
    if not FHIR_ID.fullmatch(pid) or not _patient_exists(ctx, f"Patient/{pid}"):
        raise refuse(404, "not-found", "no such Patient")
    return fhir_json(200, _patient(pid))


# --- documents -----------------------------------------------------------------------------


def _all_documents(ctx: Context) -> list[StoredDocument]:
    return ctx.store.documents("fhir")


def _create_document(ctx: Context, req: Request) -> Response:
    _authorized(ctx, req)
    if req.media_type()[0] not in ("application/fhir+json", "application/json"):
        raise refuse(415, "not-supported", "Content-Type must be application/fhir+json")
    try:
        payload = json.loads(req.take_body())
    except (ValueError, RecursionError):
        raise refuse(400, "structure", "body is not valid JSON") from None
    resource = checked_document(payload)
    del payload
    if ctx.fhir.conditional_create:
        existing = _conditional(ctx, req.header("If-None-Exist"))
        if existing is not None:
            return _answer(req, 200, existing, ctx)
    subject = (resource.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject.startswith("Patient/"):
        raise refuse(400, "required", "subject must reference a Patient")
    if not _patient_exists(ctx, subject):
        raise refuse(422, "processing", "the subject Patient does not exist")
    attachment = resource["content"][0]["attachment"]
    binary = None
    if "url" in attachment:
        url = str(attachment.pop("url")).split("/_history/")[0]
        binary = url.removeprefix(ctx.url + PREFIX + "/")
        stored = ctx.fhir.binary(binary.removeprefix("Binary/"))
        if not binary.startswith("Binary/") or stored is None:
            raise refuse(422, "processing", "attachment.url names no Binary on this server")
        content = stored[1]
    else:
        content = decoded_data(attachment)
        del attachment["data"]
    check_size_and_hash(attachment, content)
    fields = {
        "resource": json.dumps(resource),
        "identifier": " ".join(identifier_tokens(resource)),
        "category": concept_text((resource.get("category") or [None])[0]),
    }
    if binary is not None:
        fields["binary"] = binary.removeprefix("Binary/")
    doc = new_document(
        "fhir",
        "doc-",
        content,
        patient_id=subject,
        name=str(attachment.get("title", "")),
        title=str(resource.get("description", "")),
        doc_type=concept_text(resource.get("type")),
        mime=str(attachment["contentType"]),
        fields=fields,
    )
    ctx.store.add(("fhir", subject), doc)
    return _answer(req, 201, doc, ctx)


def _conditional(ctx: Context, header: str | None) -> StoredDocument | None:
    """The one document If-None-Exist names; None: create; 412 when several match."""
    if header is None:
        return None
    query = dict(parse_qsl(header.strip()))
    identifier = query.get("identifier")
    if set(query) != {"identifier"} or not identifier:
        raise refuse(400, "not-supported", "If-None-Exist: only identifier=system|value")
    matches = [d for d in _all_documents(ctx) if identifier in d.fields["identifier"].split(" ")]
    if len(matches) > 1:
        raise refuse(412, "duplicate", "several DocumentReferences match If-None-Exist")
    return matches[0] if matches else None


def _answer(req: Request, status: int, doc: StoredDocument, ctx: Context) -> Response:
    location = {"Location": f"{ctx.url}{PREFIX}/DocumentReference/{doc.id}/_history/1"}
    if (req.header("Prefer") or "").replace(" ", "") == "return=minimal":
        return Response(status, b"", None, location)
    return fhir_json(status, representation(doc, ctx.url + PREFIX), location)


def _read_document(ctx: Context, req: Request, doc_id: str) -> Response:
    _authorized(ctx, req)
    for doc in _all_documents(ctx):
        if doc.id == doc_id:
            return fhir_json(200, representation(doc, ctx.url + PREFIX))
    raise refuse(404, "not-found", "no such DocumentReference")


def _search_documents(ctx: Context, req: Request) -> Response:
    _authorized(ctx, req)
    query = _query(req, "DocumentReference")
    docs = _all_documents(ctx)
    if "identifier" in query:
        docs = [d for d in docs if query["identifier"] in d.fields["identifier"].split(" ")]
    subject = query.get("subject") or (f"Patient/{query['patient']}" if "patient" in query else "")
    if subject:
        docs = [d for d in docs if d.patient_id == subject]
    try:
        count, offset = int(query.get("_count", "20")), int(query.get("_offset", "0"))
    except ValueError:
        raise refuse(400, "value", "_count and _offset must be numbers") from None
    page = docs[offset : offset + max(1, count)]
    next_url = None
    if offset + len(page) < len(docs):
        rest = {k: v for k, v in query.items() if k != "_offset"}
        rest["_offset"] = str(offset + len(page))
        next_url = f"{ctx.url}{PREFIX}/DocumentReference?" + "&".join(
            f"{k}={v}" for k, v in rest.items()
        )
    resources = [representation(d, ctx.url + PREFIX) for d in page]
    return fhir_json(200, bundle(resources, ctx.url + PREFIX, len(docs), next_url))


# --- binaries ------------------------------------------------------------------------------


def _create_binary(ctx: Context, req: Request) -> Response:
    _authorized(ctx, req)
    media = req.media_type()[0]
    if not media:
        raise refuse(400, "required", "a Binary needs a Content-Type")
    data = req.take_body()
    if media in ("application/fhir+json", "application/json"):
        raise refuse(415, "not-supported", "post the raw bytes with their own Content-Type")
    binary_id = new_id("bin-")
    ctx.fhir.add_binary(binary_id, media, data)
    location = {"Location": f"{ctx.url}{PREFIX}/Binary/{binary_id}/_history/1"}
    if (req.header("Prefer") or "").replace(" ", "") == "return=minimal":
        return Response(201, b"", None, location)
    return fhir_json(201, _binary_resource(binary_id, media, data), location)


def _binary_resource(binary_id: str, media: str, data: bytes) -> dict[str, Any]:
    import base64

    encoded = base64.b64encode(data).decode("ascii")
    return {"resourceType": "Binary", "id": binary_id, "contentType": media, "data": encoded}


def _read_binary(ctx: Context, req: Request, binary_id: str) -> Response:
    _authorized(ctx, req)
    stored = ctx.fhir.binary(binary_id)
    if stored is None:
        raise refuse(404, "not-found", "no such Binary")
    media, data = stored
    accept = (req.header("Accept") or "").split(",")[0].strip().split(";")[0]
    if accept in ("application/fhir+json", "application/json"):
        return fhir_json(200, _binary_resource(binary_id, media, data))
    return Response(200, data, media)


_TYPE_ENDPOINTS = {
    "Patient": {"GET": Endpoint("patient", _search_patients)},
    "DocumentReference": {
        "GET": Endpoint("list", _search_documents),
        "POST": Endpoint("upload", _create_document, MAX_BODY),
    },
    "Binary": {"POST": Endpoint("binary", _create_binary, MAX_BODY)},
}
_READS = {
    "Patient": ("patient", _read_patient),
    "DocumentReference": ("get", _read_document),
    "Binary": ("value", _read_binary),
}
