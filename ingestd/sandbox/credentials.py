"""The sandbox's fixed credentials and the one way every route compares a secret.

These are test values printed by `ingestd sandbox`; they protect nothing.
"""

from __future__ import annotations

import hmac

# Test values, published on purpose (`ingestd sandbox` prints them): they guard nothing.
SANDBOX_CREDENTIALS: dict[str, dict[str, str]] = {
    "leyr": {
        "emr": "webdoc",
        "care_unit_id": "care-unit-123",
        "client_id": "sandbox-leyr-client",
        "client_secret": "sandbox-leyr-secret",
    },
    "nymbl": {
        "api_key": "sandbox-nymbl-key",
        "client_id": "sandbox-nymbl-client",
        "client_secret": "sandbox-nymbl-secret",
    },
    "fhir": {
        "client_id": "sandbox-fhir-client",
        "client_secret": "sandbox-fhir-secret",
        "bearer_token": "sandbox-fhir-bearer",
        "key_id": "sandbox-rs384",  # also "sandbox-es384" (see fhir_token.sandbox_key_pem)
    },
}


def same_secret(given: str, expected: str) -> bool:
    """Compare in constant time, as a real server would; header values arrive as latin-1 text."""
    return hmac.compare_digest(
        given.encode("latin-1", "replace"), expected.encode("latin-1", "replace")
    )
