"""Patient folders to patient ids: explicit names, patterns, the default, and the Luhn check."""

from __future__ import annotations

import re

import pytest

from ingestd.identifiers import luhn_ok
from ingestd.rules.patients import PatientMap, PatientPattern, parse_patients
from ingestd.rules.templates import parse_template
from ingestd.yamlsource import MarkedDict, Report, load

PNR = PatientPattern(
    re.compile(r"(?P<pnr>(19|20)\d{10})"), parse_template("se_personal_number:{pnr}")
)


def parse(text: str) -> tuple[PatientMap, Report]:
    data, problems = load(text, "c.yaml")
    assert problems == []
    assert isinstance(data, MarkedDict)
    report = Report("c.yaml")
    return parse_patients(report, data["patients"]), report


def test_default_is_the_folder_name() -> None:
    assert PatientMap().patient_id("12345") == "12345"
    assert PatientMap().patient_id("emr_id:abc") == "emr_id:abc"


def test_explicit_folder_first_then_first_matching_pattern_then_the_name() -> None:
    patients = PatientMap(
        {"191212121212": "emr_id:special"},
        (PNR, PatientPattern(re.compile(r"\d+"), parse_template("emr_id:x"))),
    )
    assert patients.patient_id("191212121212") == "emr_id:special"
    assert patients.patient_id("200001011234") == "se_personal_number:200001011234"
    assert patients.patient_id("42") == "emr_id:x"
    assert patients.patient_id("Andersson Anna") == "Andersson Anna"


def test_patterns_must_match_the_whole_folder_name() -> None:
    patients = PatientMap({}, (PNR,))
    assert patients.patient_id("x191212121212") == "x191212121212"
    assert patients.patient_id("1912121212123") == "1912121212123"


def test_pattern_whose_group_did_not_take_part_is_skipped() -> None:
    optional = PatientPattern(re.compile(r"p(?P<n>\d+)?"), parse_template("n:{n}"))
    patients = PatientMap({}, (optional,))
    assert patients.patient_id("p7") == "n:7"
    assert patients.patient_id("p") == "p"


@pytest.mark.parametrize(
    ("digits", "ok"),
    [
        ("191212121212", True),
        ("1212121212", True),
        ("198112189876", True),
        ("191212121213", False),
        ("19121212121", False),
        ("19121212121a", False),
        ("١٩١٢١٢١٢١٢١٢", False),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("", False),
    ],
)
def test_luhn(digits: str, ok: bool) -> None:
    assert luhn_ok(digits) is ok


def test_parse_section() -> None:
    patients, report = parse(
        """
patients:
  folders:
    191212121212: "emr_id:abc"
    Anna: 0042
  patterns:
    - folder: '(?P<pnr>\\d{12})'
      id: 'se_personal_number:{pnr}'
"""
    )
    assert report.problems == []
    assert patients.folders == {"191212121212": "emr_id:abc", "Anna": "0042"}
    assert patients.patient_id("200001011234") == "se_personal_number:200001011234"


def test_section_problems() -> None:
    _, report = parse(
        """
patients:
  folder: {}
  folders: {a: [1]}
  patterns:
    - folder: '(?P<pnr>\\d{12}'
      id: 'x:{pnr}'
    - folder: '(?P<pnr>\\d{12})'
      id: 'se_personal_number:{pnrr}'
    - folder: '\\d+'
      id: 'x:{n}'
    - {folder: x}
    - nope
"""
    )
    assert [(p.line, p.col, p.message) for p in report.problems] == [
        (3, 3, "unknown key 'folder' in patients; did you mean 'folders'?"),
        (4, 16, "a patients.folders entry must be a string, not a list"),
        (
            6,
            15,
            "patients.patterns[1].folder is not a valid regex: missing ), unterminated subpattern",
        ),
        (
            9,
            11,
            "unknown field {pnrr} in patients.patterns[2].id; did you mean 'pnr'? "
            "(fields here: {pnr})",
        ),
        (11, 11, "unknown field {n} in patients.patterns[3].id (fields here: none)"),
        (12, 7, "patients.patterns[4] is missing the required key 'id'"),
        (13, 7, "patients.patterns[5] must be a mapping, not a string"),
    ]


def test_problems_never_echo_folder_names_or_ids() -> None:
    text = """
patients:
  folders:
    191212121212: "se_personal_number:191212121212"
    191212121212: [x]
    200001011234: {a: 1}
"""
    data, problems = load(text, "c.yaml")
    assert isinstance(data, MarkedDict)
    report = Report("c.yaml")
    parse_patients(report, data["patients"])
    messages = [str(p) for p in problems + report.problems]
    assert messages == [
        "c.yaml:5:5: duplicate key (the same key is on line 4)",
        "c.yaml:6:19: a patients.folders entry must be a string, not a mapping",
    ]
