"""`ingestd demo` works from a checkout, and the installed package carries the same config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_example_config_is_the_one_in_config() -> None:
    packaged = ROOT / "ingestd" / "demo_files" / "ingestd.yaml"
    assert packaged.read_bytes() == (ROOT / "config" / "ingestd.yaml").read_bytes(), (
        "copy config/ingestd.yaml to ingestd/demo_files/ingestd.yaml"
    )


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingestd", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\ndone ") == 6
    # A FHIR patient found by identifier: one DocumentReference, coded type, stable identifier.
    assert "done     fhir-194107086995/discharge summary.pdf -> fhir" in result.stdout
    assert "DocumentReference, type http://loinc.org|18842-5|Discharge summary" in result.stdout
    # A real G4 fax reaches the Leyr sandbox as a PDF that opens with its three pages.
    assert "done     Andersson Anna/letters/2026-11-21 referral.tif -> leyr" in result.stdout
    assert (
        "converted image/tiff -> application/pdf, 3 page(s); the EHR's copy opens with 3 page(s)"
        in result.stdout
    )
    assert "failed   198112189876/consent.pdf -> patient_not_found" in result.stdout
    assert "demo OK" in result.stdout
