"""The control plane under /_sandbox: inspect and steer a sandbox running in another process.

GET documents (no content) and requests, POST/DELETE/GET faults, POST reset, and POST tamper:
what an EHR's own users may do to a stored document behind our back (`{"id", "action": "delete"}`,
`{"id", "action": "content", "content": BASE64}`, `{"id", "action": "move", "patient_id"}`).
`?api=` narrows the two listings. Never faulted and never authenticated: it only listens where
the sandbox does.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import parse_qs

from ingestd.sandbox import leyr, nymbl
from ingestd.sandbox.faults import Fault
from ingestd.sandbox.store import Store
from ingestd.sandbox.wire import (
    Context,
    Endpoint,
    Handler,
    Request,
    Response,
    Route,
    dispatch,
    fail,
    json_response,
    not_found,
)

PREFIX = "/_sandbox"


def _api_filter(req: Request) -> str | None:
    values = parse_qs(req.query).get("api")
    return values[0] if values else None


def _documents(ctx: Context, req: Request) -> Response:
    docs = ctx.store.documents(_api_filter(req))
    return json_response(200, [doc.to_json() for doc in docs])


def _requests(ctx: Context, req: Request) -> Response:
    return json_response(200, [r.to_json() for r in ctx.store.requests(_api_filter(req))])


def _faults(ctx: Context, req: Request) -> Response:
    return json_response(200, [fault.to_json() for fault in ctx.faults.pending()])


def _add_fault(ctx: Context, req: Request) -> Response:
    try:
        fault = Fault.from_json(json.loads(req.take_body()))
    except (ValueError, TypeError) as exc:
        raise fail(400, "invalid_fault", str(exc)) from None
    ctx.faults.add(fault)
    return Response(204)


def _clear_faults(ctx: Context, req: Request) -> Response:
    ctx.faults.clear()
    return Response(204)


def _reset(ctx: Context, req: Request) -> Response:
    ctx.store.reset()
    ctx.faults.clear()
    ctx.fhir.reset()
    return Response(204)


class TamperError(ValueError):
    """A tamper request that names no stored document or no valid change."""


def patient_key(api: str, patient_id: str) -> str:
    """The key an API files a patient's documents under (see each API's `_scope`)."""
    if api == "leyr":
        key = leyr.patient_key(patient_id)
    elif api == "fhir":
        key = patient_id if patient_id.startswith("Patient/") else None
    else:
        key = str(int(patient_id)) if nymbl.PATIENT_ID.fullmatch(patient_id) else None
    if key is None:
        raise TamperError("patient_id is not a valid identifier for this API")
    return key


def tamper(store: Store, request: dict[str, Any]) -> None:
    """Delete a stored document, change its content, or move it to another patient."""
    doc_id, action = request.get("id"), request.get("action")
    found = {doc.id: doc for doc in store.documents()}.get(str(doc_id))
    if found is None:
        raise TamperError("no such document")
    if action == "delete":
        store.remove(found.id)
    elif action == "content":
        try:
            data = base64.b64decode(str(request.get("content", "")), validate=True)
        except (binascii.Error, ValueError):
            raise TamperError("content must be base64") from None
        store.replace_content(found.id, data)
    elif action == "move":
        patient_id = str(request.get("patient_id", ""))
        store.move(found.id, patient_key(found.api, patient_id), patient_id)
    else:
        raise TamperError("action must be delete, content or move")


def _tamper(ctx: Context, req: Request) -> Response:
    try:
        request = json.loads(req.take_body())
        if not isinstance(request, dict):
            raise TamperError("a tamper request is a JSON object")
        tamper(ctx.store, request)
    except ValueError as exc:
        raise fail(400, "invalid_tamper", str(exc)) from None
    return Response(204)


_ROUTES: dict[str, dict[str, Handler]] = {
    "/documents": {"GET": _documents},
    "/requests": {"GET": _requests},
    "/faults": {"GET": _faults, "POST": _add_fault, "DELETE": _clear_faults},
    "/reset": {"POST": _reset},
    "/tamper": {"POST": _tamper},
}


def route(method: str, path: str) -> Route:
    """`path` is what follows /_sandbox."""
    methods = _ROUTES.get(path)
    if methods is None:
        return not_found("control")
    name = path.lstrip("/")
    return dispatch("control", method, {m: Endpoint(name, h) for m, h in methods.items()})
