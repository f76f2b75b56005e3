"""Nymbl's document routes, served under /nymbl (OData style paths).

`/Patients({id})/Documents`: POST uploads multipart/form-data, GET lists (with $top, $skip,
$count, $filter); `/Patients({id})/Documents({docid})`: GET metadata, DELETE; `.../$value`: GET the
raw bytes. Every request needs a valid Bearer token from oauth.py and the x-api-key. Checked in
this order: authentication (401), patient id syntax (400), unknown patient (404), the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ingestd.sandbox import multipart, odata
from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS, same_secret
from ingestd.sandbox.store import Scope, StoredDocument, new_document
from ingestd.sandbox.wire import (
    Context,
    DocumentRoutes,
    Endpoint,
    KiB,
    MiB,
    Request,
    Response,
    Route,
    bind,
    delete_document,
    dispatch,
    fail,
    json_response,
    not_found,
    stored_document,
)

PREFIX = "/nymbl"
MAX_FILE = 25 * MiB
# Room for the other fields and the multipart framing: anything longer is refused unread.
MAX_BODY = MAX_FILE + 64 * KiB
FILE_TYPES = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    }
)
UPLOADED_BY = "sandbox-client"
_PATIENTS = re.compile(r"Patients\((.*)\)", re.DOTALL)
_DOCUMENTS = re.compile(r"Documents(?:\((.*)\))?", re.DOTALL)
PATIENT_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class _Where:
    patient_id: str  # as written in the path
    document_id: str = ""


def _document_key(raw: str) -> str:
    # The guide writes keys bare, Documents(doc-abc123); OData clients quote string keys.
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    return raw


def route(method: str, path: str) -> Route:
    """`path` is what follows /nymbl, still percent-encoded; `$value` may arrive as `%24value`."""
    segments = [unquote(s, errors="replace") for s in path.split("/")[1:]]
    patient = _PATIENTS.fullmatch(segments[0]) if segments else None
    documents = _DOCUMENTS.fullmatch(segments[1]) if len(segments) > 1 else None
    if patient is None or documents is None or len(segments) > 3:
        return not_found("nymbl")
    pid = patient.group(1)
    if documents.group(1) is None:
        if len(segments) != 2:
            return not_found("nymbl", pid)
        return _ROUTES.documents(method, _Where(pid), pid)
    where = _Where(pid, _document_key(documents.group(1)))
    if len(segments) == 2:
        return _ROUTES.document(method, where, pid)
    if segments[2] != "$value":
        return not_found("nymbl", pid)
    return dispatch("nymbl", method, {"GET": Endpoint("value", bind(_value, where))}, pid)


def _authenticate(ctx: Context, req: Request) -> None:
    scheme, _, token = (req.header("Authorization") or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        challenge = {"WWW-Authenticate": 'Bearer realm="nymbl"'}
        raise fail(401, "unauthorized", "a Bearer access token is required", challenge)
    if not ctx.store.token_valid(token):
        challenge = {"WWW-Authenticate": 'Bearer realm="nymbl", error="invalid_token"'}
        raise fail(401, "invalid_token", "access token is invalid or expired", challenge)
    api_key = req.header("x-api-key")
    if api_key is None or not same_secret(api_key, SANDBOX_CREDENTIALS["nymbl"]["api_key"]):
        raise fail(401, "unauthorized", "missing or invalid x-api-key")


def _scope(ctx: Context, req: Request, where: _Where) -> tuple[Scope, str]:
    _authenticate(ctx, req)
    if not PATIENT_ID.fullmatch(where.patient_id):
        raise fail(400, "invalid_patient_id", "patient id must be numeric")
    patient_id = str(int(where.patient_id))
    if not ctx.patient_exists(patient_id, where.patient_id):
        raise fail(404, "patient_not_found", "patient not found")
    return ("nymbl", patient_id), patient_id


def _metadata(doc: StoredDocument) -> dict[str, object]:
    return {
        "id": doc.id,
        "patient_id": doc.patient_id,
        "file_name": doc.name,
        "content_type": doc.mime,
        "file_size_bytes": doc.size,
        "document_type": doc.fields.get("document_type"),
        "description": doc.fields.get("description"),
        "uploaded_by_id": UPLOADED_BY,
        "uploaded_at": doc.created_at,
    }


def _parts(req: Request) -> tuple[multipart.Part, dict[str, str]]:
    """The file part and the text fields of an upload."""
    media, params = req.media_type()
    if media != "multipart/form-data":
        raise fail(415, "unsupported_media_type", "Content-Type must be multipart/form-data")
    boundary = params.get("boundary")
    if not boundary:
        raise fail(400, "bad_request", "multipart/form-data without a boundary")
    try:
        parts = multipart.parse(req.take_body(), boundary)
    except multipart.MultipartError as exc:
        raise fail(400, "bad_request", f"malformed multipart body: {exc}") from None
    file_part: multipart.Part | None = None
    fields: dict[str, str] = {}
    for part in parts:
        if part.name in fields or (part.name == "file" and file_part is not None):
            raise fail(400, "bad_request", f"field {part.name} is given twice")
        if part.name == "file":
            file_part = part
            continue
        try:
            fields[part.name] = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(400, "bad_request", f"field {part.name} is not UTF-8 text") from None
    if file_part is None or not file_part.filename:
        raise fail(400, "bad_request", "missing required field: file (a file with a filename)")
    return file_part, fields


def _upload(ctx: Context, req: Request, where: _Where) -> Response:
    scope, patient_id = _scope(ctx, req, where)
    part, fields = _parts(req)
    if part.content_type not in FILE_TYPES:
        raise fail(400, "bad_request", "unsupported file type")
    if len(part.data) > MAX_FILE:
        raise fail(413, "payload_too_large", "file exceeds the 25 MB size limit")
    if not part.data:
        raise fail(400, "bad_request", "file is empty")
    assert part.filename is not None
    assert part.content_type is not None
    doc = new_document(
        "nymbl",
        "doc-",
        part.data,
        patient_id=patient_id,
        name=part.filename,
        title=fields.get("description", ""),
        doc_type=fields.get("document_type", ""),
        mime=part.content_type,
        fields=fields,
    )
    ctx.store.add(scope, doc)
    return json_response(201, _metadata(doc))


def _list(ctx: Context, req: Request, where: _Where) -> Response:
    scope, _ = _scope(ctx, req, where)
    try:
        query = odata.parse_query(req.query)
    except odata.ODataError as exc:
        raise fail(400, "bad_request", str(exc)) from None
    page, count = query.apply([_metadata(doc) for doc in ctx.store.in_scope(scope)])
    body: dict[str, object] = {"@odata.context": f"{ctx.url}{PREFIX}/$metadata#Documents"}
    if query.count:
        body["@odata.count"] = count
    body["value"] = page
    return json_response(200, body)


def _get(ctx: Context, req: Request, where: _Where) -> Response:
    scope, _ = _scope(ctx, req, where)
    return json_response(200, _metadata(stored_document(ctx, scope, where.document_id)))


def _value(ctx: Context, req: Request, where: _Where) -> Response:
    scope, _ = _scope(ctx, req, where)
    doc = stored_document(ctx, scope, where.document_id)
    return Response(200, doc.content, doc.mime)


def _delete(ctx: Context, req: Request, where: _Where) -> Response:
    scope, _ = _scope(ctx, req, where)
    return delete_document(ctx, scope, where.document_id)


_ROUTES = DocumentRoutes(
    "nymbl", upload=_upload, list_=_list, get=_get, delete=_delete, upload_limit=MAX_BODY
)
