"""The sandbox's FHIR R4 server as a client other than ingestd sees it: an OperationOutcome for
every error, the open CapabilityStatement, and a token endpoint that checks what SMART asks of a
client assertion (signature, audience, expiry, one use)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from tests.targets.fhir_r4 import fhir_exchanges  # noqa: F401 - a fixture

# Every FHIR request and response of these tests is validated against R4 (tests/targets/fhir_r4).
pytestmark = pytest.mark.usefixtures("fhir_exchanges")

CLIENT = SANDBOX_CREDENTIALS["fhir"]["client_id"]
BEARER = {"Authorization": "Bearer " + SANDBOX_CREDENTIALS["fhir"]["bearer_token"]}


def _outcome(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    payload = response.json()
    assert payload["resourceType"] == "OperationOutcome"
    return str(payload["issue"][0]["diagnostics"])


def test_the_capability_statement_is_open_and_says_conditional_create(sb: Sandbox) -> None:
    statement = requests.get(f"{sb.fhir_base_url}/metadata", timeout=5).json()
    assert statement["fhirVersion"] == "4.0.1"
    [documents] = [r for r in statement["rest"][0]["resource"] if r["type"] == "DocumentReference"]
    assert documents["conditionalCreate"] is True


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/DocumentReference/doc-x", {}, 401),
        ("GET", "/DocumentReference/doc-x", BEARER, 404),
        ("GET", "/Observation", BEARER, 404),
        ("DELETE", "/DocumentReference/doc-x", BEARER, 405),
        ("GET", "/DocumentReference?name=x", BEARER, 400),
        ("POST", "/DocumentReference", {**BEARER, "Content-Type": "text/plain"}, 415),
    ],
)
def test_every_error_is_an_operation_outcome(
    sb: Sandbox, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = requests.request(method, sb.fhir_base_url + path, headers=headers, timeout=5)
    assert response.status_code == status
    assert _outcome(response)


def _assertion(sb: Sandbox, **changes: Any) -> str:
    jwt = pytest.importorskip("jwt", reason="PyJWT is needed for SMART Backend Services")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from ingestd.sandbox.fhir_token import sandbox_key_pem

    key = load_pem_private_key(sandbox_key_pem("sandbox-rs384").encode(), None)
    now = int(time.time())
    claims = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": sb.fhir_token_url,
        "jti": uuid.uuid4().hex,
        "exp": now + 240,
    }
    claims.update(changes)
    return str(jwt.encode(claims, key, algorithm="RS384", headers={"kid": "sandbox-rs384"}))


def _token(sb: Sandbox, assertion: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    return requests.post(sb.fhir_token_url, data=form, timeout=5)


def test_a_good_assertion_gets_a_token_once(sb: Sandbox) -> None:
    assertion = _assertion(sb)
    first = _token(sb, assertion)
    assert first.status_code == 200
    token = first.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{sb.fhir_base_url}/Patient/pat-1", headers=headers, timeout=5).ok
    replay = _token(sb, assertion)
    assert replay.status_code == 401
    assert "used before" in replay.json()["error_description"]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"exp": int(time.time()) + 3600}, "more than 5 minutes"),
        ({"aud": "https://elsewhere/token"}, "InvalidAudienceError"),
        ({"sub": "someone-else"}, "sub must be the client_id"),
    ],
)
def test_a_bad_assertion_is_refused_with_the_reason(
    sb: Sandbox, changes: dict[str, Any], said: str
) -> None:
    refused = _token(sb, _assertion(sb, **changes))
    assert refused.status_code == 401
    assert said in refused.json()["error_description"]
