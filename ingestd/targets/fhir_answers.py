"""What a FHIR server's answers say: its CapabilityStatement (conditional create, Binary
create), and the id of a resource it created (from the body, else the Location header)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from ingestd.targets.bodies import StreamingBody
from ingestd.targets.fhir_document import FHIR_JSON


@dataclass(frozen=True)
class Capabilities:
    conditional_create: bool  # DocumentReference: If-None-Exist is honoured
    binary_create: bool


class JsonBytes(StreamingBody):
    """A small FHIR JSON body already made."""

    content_type = FHIR_JSON

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data), iter([data]))


def created_id(response: requests.Response, resource_type: str, payload: Any = None) -> str | None:
    """The new (or existing) resource's id: from the body, else the Location header."""
    if payload is None:
        try:
            payload = response.json()
        except ValueError:
            payload = None
    if isinstance(payload, dict) and payload.get("resourceType") == resource_type:
        value = payload.get("id")
        if isinstance(value, str) and value:
            return value
    location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
    parts = location.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def capabilities_in(statement: object) -> Capabilities:
    """Conditional create and Binary create as the server's CapabilityStatement declares them."""
    conditional = binary = False
    rests = statement.get("rest") if isinstance(statement, dict) else None
    for rest in rests if isinstance(rests, list) else []:
        if not isinstance(rest, dict) or rest.get("mode") != "server":
            continue
        for resource in rest.get("resource") or []:
            if not isinstance(resource, dict):
                continue
            interactions = {i.get("code") for i in resource.get("interaction") or [] if i}
            if resource.get("type") == "DocumentReference":
                conditional = resource.get("conditionalCreate") is True
            if resource.get("type") == "Binary":
                binary = "create" in interactions
    return Capabilities(conditional, binary)
