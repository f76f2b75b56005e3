"""Every FHIR request and response the sandbox handles, checked against the R4 (4.0.1)
definitions by a real FHIR model library (fhir.resources 6.1, pydantic models generated from the
R4 StructureDefinitions), plus the value sets and cardinalities it leaves to us."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ingestd.sandbox import fhir as sandbox_fhir
from ingestd.sandbox.wire import Context, Request, Response, Route


def r4_library() -> Any:
    """fhir.resources, when installed and R4 (4.0.1); None otherwise."""
    try:
        import fhir.resources as resources
    except ImportError:
        return None
    return resources if resources.__fhir_version__ == "4.0.1" else None


def check_resource(payload: dict[str, Any]) -> None:
    """Raise if `payload` is not a valid R4 resource (as far as the library and we can tell)."""
    resources = r4_library()
    assert resources is not None
    resources.construct_fhir_element(payload["resourceType"], payload)
    if payload["resourceType"] == "DocumentReference":
        assert payload["status"] in ("current", "superseded", "entered-in-error")
        assert payload["content"], "content is 1..*"
        for identifier in payload.get("identifier", []):
            assert identifier.get("system")
            assert identifier.get("value")
    if payload["resourceType"] == "OperationOutcome":
        assert payload["issue"], "issue is 1..*"


def _is_fhir_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip()
    return media in ("application/fhir+json", "application/json")


@dataclass
class Exchanges:
    """What the FHIR routes received and answered, as JSON where it was JSON."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    raw_requests: int = 0

    def check_all(self) -> None:
        for payload in [*self.requests, *self.responses]:
            check_resource(payload)


@pytest.fixture
def fhir_exchanges(monkeypatch: pytest.MonkeyPatch) -> Iterator[Exchanges]:
    """Record the sandbox's FHIR traffic; every JSON body is validated after the test."""
    seen = Exchanges()
    route, as_outcome = sandbox_fhir.route, sandbox_fhir.as_outcome

    def recording_route(method: str, path: str) -> Route:
        chosen = route(method, path)
        handler = chosen.handler

        def recorded(ctx: Context, req: Request) -> Response:
            if req.body and _is_fhir_json(req.header("Content-Type")):
                seen.requests.append(json.loads(req.body))
            elif req.body:
                seen.raw_requests += 1
            return handler(ctx, req)

        return Route(chosen.api, chosen.kind, recorded, chosen.max_body, chosen.patient_id)

    def recording_outcome(response: Response) -> Response:
        answered = as_outcome(response)
        if answered.body and _is_fhir_json(answered.content_type):
            seen.responses.append(json.loads(answered.body))
        return answered

    monkeypatch.setattr(sandbox_fhir, "route", recording_route)
    monkeypatch.setattr(sandbox_fhir, "as_outcome", recording_outcome)
    yield seen
    if r4_library() is not None:
        seen.check_all()
