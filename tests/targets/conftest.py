"""Fixtures for the target tests: real temp files opened as descriptors, the sandbox EHR, and
targets built through the registry against it."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from ingestd.targets import CommonSettings, TargetSettings, make_target
from ingestd.targets.base import Target, Upload

from .fhir_r4 import Exchanges, fhir_exchanges

UploadFactory = Callable[..., Upload]


@pytest.fixture(autouse=True)
def _every_fhir_exchange_is_r4(fhir_exchanges: Exchanges) -> Exchanges:
    """Each target test's FHIR traffic is validated against R4 (when fhir.resources is here)."""
    return fhir_exchanges


__all__ = ["fhir_exchanges"]

# File names real scanners and people produce that a multipart upload must carry as they are.
HARD_FILE_NAMES = [
    'Remiss "Dr. O\'Brien".pdf',
    "back\\slash.pdf",
    "ends in a backslash\\",
    'semi;colon; filename="x.pdf".pdf',
    "100% sure %22 %41.pdf",
    "Röntgen åäö 日本 €.pdf",
]


def pdf_bytes(size: int, seed: int = 1) -> bytes:
    """`size` bytes that start like a PDF and are otherwise pseudo-random (and repeatable)."""
    head = b"%PDF-1.7\n"[:size]
    return head + random.Random(seed).randbytes(size - len(head))


@pytest.fixture
def make_upload(tmp_path: Path) -> Iterator[UploadFactory]:
    fds: list[int] = []

    def make(
        data: bytes = b"%PDF-1.7\nhello",
        *,
        patient_id: str = "12345",
        file_name: str = "scan.pdf",
        mime: str = "application/pdf",
        title: str = "Scan",
        doc_type: str = "Referral",
        fields: Mapping[str, str] | None = None,
        size: int | None = None,
    ) -> Upload:
        path = tmp_path / f"upload-{len(fds)}.bin"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        return Upload(
            patient_id=patient_id,
            file_name=file_name,
            mime=mime,
            size=len(data) if size is None else size,
            known_sha256=hashlib.sha256(data).hexdigest(),
            title=title,
            doc_type=doc_type,
            fields=dict(fields or {}),
            fd=fd,
        )

    yield make
    for fd in fds:
        os.close(fd)


@pytest.fixture
def sb(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory()


def settings_for(
    sb: Sandbox, kind: str, options: Mapping[str, str] | None = None, **common: Any
) -> TargetSettings:
    """TargetSettings pointing at the sandbox with its credentials; `options` override them."""
    creds = SANDBOX_CREDENTIALS[kind]
    if kind == "leyr":
        base = {
            "base_url": sb.leyr_base_url,
            "emr": creds["emr"],
            "care_unit_id": creds["care_unit_id"],
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        }
    elif kind == "fhir":
        base = {
            "base_url": sb.fhir_base_url,
            "token_url": sb.fhir_token_url,
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        }
    else:
        base = {
            "base_url": sb.nymbl_base_url,
            "token_url": sb.nymbl_token_url,
            "api_key": creds["api_key"],
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        }
    return TargetSettings(
        name=kind, kind=kind, options={**base, **(options or {})}, common=CommonSettings(**common)
    )


TargetFactory = Callable[..., Target]


@pytest.fixture
def target_for() -> Iterator[TargetFactory]:
    """Build a target against a sandbox through the registry; closed after the test."""
    built: list[Target] = []

    def build(
        sb: Sandbox, kind: str, options: Mapping[str, str] | None = None, **common: Any
    ) -> Target:
        target = make_target(settings_for(sb, kind, options, **common))
        built.append(target)
        return target

    yield build
    for target in built:
        target.close()
