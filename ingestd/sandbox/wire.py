"""What routes see of HTTP: the request and response values, routing, JSON helpers.

Owns the routing every API shares: `dispatch` (a method table to a `Route`, 405 for any other
method) and `DocumentRoutes` (the two resources both document APIs serve, with the same methods),
plus the document look-up and delete steps the two APIs share. Routes never touch a socket: they
take a `Request` whose body is already read and return a `Response` (or raise `Abort`);
`server.py` reads and writes the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Generic, TypeVar

from ingestd.sandbox.faults import FaultQueue
from ingestd.sandbox.fhir_state import FhirState
from ingestd.sandbox.multipart import MultipartError, parse_params
from ingestd.sandbox.store import Scope, Store, StoredDocument

KiB = 1024
MiB = 1024 * KiB
# Anything but an upload has no business sending more than this.
SMALL_BODY_LIMIT = 64 * KiB


@dataclass
class Request:
    method: str
    path: str  # still percent-encoded, without the query
    query: str  # still percent-encoded
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def media_type(self) -> tuple[str, dict[str, str]]:
        """The Content-Type's lowercased media type and parameters; ("", {}) when unusable."""
        try:
            return parse_params(self.header("Content-Type") or "")
        except MultipartError:
            return "", {}

    def take_body(self) -> bytes:
        """Hand the body over and drop this reference, so a large upload is not held twice."""
        body, self.body = self.body, b""
        return body


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


JSON_TYPE = "application/json; charset=utf-8"


def json_response(
    status: int, payload: object, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps(payload, ensure_ascii=True).encode("utf-8")
    return Response(status, body, JSON_TYPE, dict(headers or {}))


def error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The sandbox's error body; messages never echo patient ids or document content."""
    return json_response(status, {"error": code, "message": message}, headers)


class Abort(Exception):
    """Raised by a route to answer at once, typically a validation failure."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def fail(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Abort:
    """`raise fail(400, ...)`: an Abort carrying the standard error body."""
    return Abort(error(status, code, message, headers))


@dataclass
class Context:
    """What routes may use: the shared state and the sandbox's settings."""

    store: Store
    faults: FaultQueue
    known_patients: frozenset[str] | None
    token_ttl_seconds: float
    latency_seconds: float
    url: str = ""  # set once the socket is bound
    # Client authentication the token endpoint accepts: like servers that take only one.
    token_client_auth: frozenset[str] = frozenset({"basic", "body"})
    # A proxy's lower body limit in front of the APIs (None: only the APIs' own limits).
    proxy_body_limit: int | None = None
    fhir: FhirState = field(default_factory=FhirState)

    def patient_exists(self, *forms: str) -> bool:
        """True when any written form of the id is known (or every patient exists)."""
        known = self.known_patients
        return known is None or any(form in known for form in forms)


Handler = Callable[[Context, Request], Response]


@dataclass(frozen=True)
class Route:
    """Where a request goes, decided from the method and path alone, before the body is read."""

    api: str  # leyr | nymbl | fhir | token | control
    kind: str  # upload | list | get | value | delete | token | unknown | control names
    handler: Handler
    max_body: int = SMALL_BODY_LIMIT
    patient_id: str | None = None


def not_found(api: str, patient_id: str | None = None) -> Route:
    def handler(ctx: Context, req: Request) -> Response:
        return error(404, "not_found", "no such resource")

    return Route(api, "unknown", handler, patient_id=patient_id)


def not_allowed(api: str, allow: str, patient_id: str | None = None) -> Route:
    def handler(ctx: Context, req: Request) -> Response:
        return error(405, "method_not_allowed", f"allowed: {allow}", {"Allow": allow})

    return Route(api, "unknown", handler, patient_id=patient_id)


@dataclass(frozen=True)
class Endpoint:
    """What one method on one resource does: the route kind it is logged as, and its handler."""

    kind: str
    handler: Handler
    max_body: int = SMALL_BODY_LIMIT


def dispatch(
    api: str, method: str, endpoints: Mapping[str, Endpoint], patient_id: str | None = None
) -> Route:
    """The route for `method`; any other method is a 405 that allows `endpoints`, in their order."""
    endpoint = endpoints.get(method)
    if endpoint is None:
        return not_allowed(api, ", ".join(endpoints), patient_id)
    return Route(api, endpoint.kind, endpoint.handler, endpoint.max_body, patient_id)


W = TypeVar("W")  # where a request points: an API's parsed path
WhereHandler = Callable[[Context, Request, W], Response]


def bind(handler: WhereHandler[W], where: W) -> Handler:
    """`handler` for the resource `where` names, as routes take it."""

    def bound(ctx: Context, req: Request) -> Response:
        return handler(ctx, req, where)

    return bound


@dataclass(frozen=True)
class DocumentRoutes(Generic[W]):
    """One document API's handlers, routed as both APIs route them: GET lists and POST uploads on
    the patient's documents; GET fetches and DELETE removes one document."""

    api: str
    upload: WhereHandler[W]
    list_: WhereHandler[W]
    get: WhereHandler[W]
    delete: WhereHandler[W]
    upload_limit: int

    def documents(self, method: str, where: W, patient_id: str) -> Route:
        endpoints = {
            "GET": Endpoint("list", bind(self.list_, where)),
            "POST": Endpoint("upload", bind(self.upload, where), self.upload_limit),
        }
        return dispatch(self.api, method, endpoints, patient_id)

    def document(self, method: str, where: W, patient_id: str) -> Route:
        endpoints = {
            "GET": Endpoint("get", bind(self.get, where)),
            "DELETE": Endpoint("delete", bind(self.delete, where)),
        }
        return dispatch(self.api, method, endpoints, patient_id)


def stored_document(ctx: Context, scope: Scope, document_id: str) -> StoredDocument:
    """The document, or a 404: another patient's document is as unknown as a missing one."""
    doc = ctx.store.get(scope, document_id)
    if doc is None:
        raise fail(404, "not_found", "document not found")
    return doc


def delete_document(ctx: Context, scope: Scope, document_id: str) -> Response:
    doc = stored_document(ctx, scope, document_id)
    ctx.store.delete(scope, doc.id)
    return Response(204)
