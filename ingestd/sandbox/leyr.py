"""Leyr's document routes ("Attach a Document"), served under /leyr/api.

`{base}/emrs/{emr}/care-units/{care_unit_id}/patients/{patient_id}/documents[/{document_id}]`:
POST uploads base64 JSON, GET lists or fetches one (with content), DELETE removes. Checked in this
order: client headers (401), EMR and care unit (404), patient id syntax (400), unknown patient
(404), then the request itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS, same_secret
from ingestd.sandbox.store import Scope, StoredDocument, new_document
from ingestd.sandbox.wire import (
    JSON_TYPE,
    Context,
    DocumentRoutes,
    KiB,
    MiB,
    Request,
    Response,
    Route,
    delete_document,
    fail,
    json_response,
    not_found,
    stored_document,
)

PREFIX = "/leyr/api"
MAX_CONTENT = 20 * MiB
_MAX_BASE64 = 4 * -(-MAX_CONTENT // 3)
# The largest document in base64 plus room for the other fields: anything longer is refused unread.
MAX_BODY = _MAX_BASE64 + 64 * KiB
FORMATS = frozenset(
    {
        "application/pdf",
        "image/jpeg",
        "image/png",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/dicom",
        "text/plain",
    }
)
_KEYS = frozenset({"content", "format", "title", "type", "created_by_id"})
_EMR_ID = re.compile(r"[A-Za-z0-9._-]+")
_PERSONAL_NUMBER = re.compile(r"[0-9]{12}")
_NON_ASCII = re.compile(rb"[\x80-\xff]+")


@dataclass(frozen=True)
class _Where:
    emr: str
    care_unit_id: str
    patient_id: str
    document_id: str = ""


def route(method: str, path: str) -> Route:
    """`path` is what follows /leyr/api, still percent-encoded; each segment is decoded alone."""
    segments = [unquote(s, errors="replace") for s in path.split("/")[1:]]
    shape_ok = (
        len(segments) in (7, 8)
        and segments[0] == "emrs"
        and segments[2] == "care-units"
        and segments[4] == "patients"
        and segments[6] == "documents"
    )
    if not shape_ok:
        return not_found("leyr")
    pid = segments[5]
    if len(segments) == 7:
        return _ROUTES.documents(method, _Where(segments[1], segments[3], pid), pid)
    if not segments[7]:
        return not_found("leyr", pid)
    return _ROUTES.document(method, _Where(segments[1], segments[3], pid, segments[7]), pid)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(digits):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def patient_key(patient_id: str) -> str | None:
    """The canonical form of a path patient id: `emr_id:X` or `se_personal_number:N`; None: invalid.

    A bare id is an emr_id, so `abc_12345` and `emr_id:abc_12345` are the same patient.
    """
    kind, sep, value = patient_id.partition(":")
    if sep and kind == "se_personal_number":
        # YYYYMMDDNNNC: the check digit is Luhn over the last ten digits.
        valid = _PERSONAL_NUMBER.fullmatch(value) is not None and _luhn_ok(value[2:])
        return patient_id if valid else None
    if sep and kind != "emr_id":
        return None
    emr_id = value if sep else patient_id
    if not _EMR_ID.fullmatch(emr_id) or emr_id in (".", ".."):
        return None
    return "emr_id:" + emr_id


def _authenticate(req: Request) -> None:
    creds = SANDBOX_CREDENTIALS["leyr"]
    client_id = req.header("x-leyr-client-id")
    secret = req.header("x-leyr-client-secret")
    if client_id is None or secret is None:
        raise fail(401, "unauthorized", "x-leyr-client-id and x-leyr-client-secret are required")
    if not (
        same_secret(client_id, creds["client_id"]) and same_secret(secret, creds["client_secret"])
    ):
        raise fail(401, "unauthorized", "invalid client credentials")


def _scope(ctx: Context, req: Request, where: _Where) -> Scope:
    _authenticate(req)
    creds = SANDBOX_CREDENTIALS["leyr"]
    if where.emr != creds["emr"]:
        raise fail(404, "not_found", "unknown EMR")
    if where.care_unit_id != creds["care_unit_id"]:
        raise fail(404, "not_found", "unknown care unit")
    key = patient_key(where.patient_id)
    if key is None:
        raise fail(400, "invalid_patient_id", "patient_id is not a valid identifier")
    if not ctx.patient_exists(where.patient_id, key, key.removeprefix("emr_id:")):
        raise fail(404, "patient_not_found", "patient not found")
    return ("leyr", where.emr, where.care_unit_id, key)


def _escaped(run: bytes) -> bytes:
    try:
        text = run.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(400, "invalid_json", "body is not UTF-8") from None
    return json.dumps(text)[1:-1].encode("ascii")


def _ascii_text(raw: bytes) -> str:
    """The JSON body as ASCII text.

    An all-ASCII str costs one byte a character; a single emoji in the title would make
    Python store the whole (base64-sized) text at four, so non-ASCII is turned into \\u escapes
    first, which JSON reads identically inside strings.
    """
    if raw.isascii():
        return raw.decode("ascii")
    # Joined from views of `raw` (re.sub would copy every unchanged stretch first), and `raw`
    # let go before decoding: no more than two body-sized objects are alive at once.
    runs = [(m.start(), m.end()) for m in _NON_ASCII.finditer(raw)]
    with memoryview(raw) as view:
        pieces: list[bytes | memoryview] = []
        last = 0
        for start, end in runs:
            pieces += [view[last:start], _escaped(raw[start:end])]
            last = end
        pieces.append(view[last:])
        escaped = b"".join(pieces)
        for piece in pieces:
            if isinstance(piece, memoryview):
                piece.release()
    del raw, pieces
    return escaped.decode("ascii")


def _optional_string(payload: dict[str, object], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(400, "invalid_field", f"{key} must be a string")
    return value


@dataclass(frozen=True)
class _Upload:
    content: bytes
    format: str
    title: str
    type: str | None
    created_by_id: str | None


def _parse_upload(req: Request) -> _Upload:
    # The body is released as soon as it is text, and the text as soon as it is parsed: at most
    # two copies of the base64 are alive at once, then the base64 and the decoded bytes.
    try:
        payload = json.loads(_ascii_text(req.take_body()))
    except (ValueError, RecursionError):
        raise fail(400, "invalid_json", "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise fail(400, "invalid_json", "body must be a JSON object")
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise fail(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    content = payload.get("content")
    if not isinstance(content, str):
        raise fail(400, "invalid_field", "content is required and must be a base64 string")
    title = payload.get("title")
    if not isinstance(title, str) or not title.strip():
        raise fail(400, "invalid_field", "title is required and must be a non-empty string")
    fmt = payload.get("format")
    if not isinstance(fmt, str):
        raise fail(400, "invalid_field", "format is required and must be a MIME type")
    if fmt.lower() not in FORMATS:
        raise fail(415, "unsupported_format", "format is not a supported MIME type")
    doc_type = _optional_string(payload, "type")
    created_by_id = _optional_string(payload, "created_by_id")
    if len(content) > _MAX_BASE64:
        raise fail(413, "payload_too_large", "document exceeds 20 MB")
    del payload
    try:
        # binascii reads an ASCII str in place; base64.b64decode(validate=True) would copy it.
        data = binascii.a2b_base64(content, strict_mode=True)
    except (binascii.Error, ValueError):
        raise fail(400, "invalid_content", "content is not valid base64") from None
    if len(data) > MAX_CONTENT:
        raise fail(413, "payload_too_large", "document exceeds 20 MB")
    if not data:
        raise fail(400, "invalid_content", "content is empty")
    return _Upload(data, fmt.lower(), title, doc_type, created_by_id)


def _summary(doc: StoredDocument) -> dict[str, object]:
    return {
        "id": doc.id,
        "title": doc.title,
        "type": doc.fields.get("type"),
        "format": doc.mime,
        "created_by_id": doc.fields.get("created_by_id"),
        "created_at": doc.created_at,
    }


def _upload(ctx: Context, req: Request, where: _Where) -> Response:
    scope = _scope(ctx, req, where)
    if req.media_type()[0] != "application/json":
        raise fail(415, "unsupported_media_type", "Content-Type must be application/json")
    upload = _parse_upload(req)
    fields = {"emr": where.emr, "care_unit_id": where.care_unit_id}
    if upload.type is not None:
        fields["type"] = upload.type
    if upload.created_by_id is not None:
        fields["created_by_id"] = upload.created_by_id
    doc = new_document(
        "leyr",
        "doc_",
        upload.content,
        patient_id=where.patient_id,
        name=upload.title,
        title=upload.title,
        doc_type=upload.type or "",
        mime=upload.format,
        fields=fields,
    )
    ctx.store.add(scope, doc)
    return json_response(201, {**_summary(doc), "patient_id": where.patient_id})


def _list(ctx: Context, req: Request, where: _Where) -> Response:
    scope = _scope(ctx, req, where)
    return json_response(200, {"items": [_summary(doc) for doc in ctx.store.in_scope(scope)]})


def _get(ctx: Context, req: Request, where: _Where) -> Response:
    doc = stored_document(ctx, _scope(ctx, req, where), where.document_id)
    head = json.dumps(_summary(doc), ensure_ascii=True).encode("utf-8")
    # Spliced rather than json.dumps'd so the base64 exists once, as bytes, not also as str.
    body = b"".join([head[:-1], b', "content": "', base64.b64encode(doc.content), b'"}'])
    return Response(200, body, JSON_TYPE)


def _delete(ctx: Context, req: Request, where: _Where) -> Response:
    return delete_document(ctx, _scope(ctx, req, where), where.document_id)


_ROUTES = DocumentRoutes(
    "leyr", upload=_upload, list_=_list, get=_get, delete=_delete, upload_limit=MAX_BODY
)
