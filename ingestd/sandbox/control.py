"""The control plane under /_sandbox: inspect and steer a sandbox running in another process.

GET documents (no content) and requests, POST/DELETE/GET faults, POST reset. `?api=` narrows the
two listings. Never faulted and never authenticated: it only listens where the sandbox does.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from ingestd.sandbox.faults import Fault
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
    return Response(204)


_ROUTES: dict[str, dict[str, Handler]] = {
    "/documents": {"GET": _documents},
    "/requests": {"GET": _requests},
    "/faults": {"GET": _faults, "POST": _add_fault, "DELETE": _clear_faults},
    "/reset": {"POST": _reset},
}


def route(method: str, path: str) -> Route:
    """`path` is what follows /_sandbox."""
    methods = _ROUTES.get(path)
    if methods is None:
        return not_found("control")
    name = path.lstrip("/")
    return dispatch("control", method, {m: Endpoint(name, h) for m, h in methods.items()})
