"""The rules language: facts, templates, globs, first-match-wins decisions and rule checking."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest

from ingestd.rules.globs import name_regex, path_regex
from ingestd.rules.matching import Decision, Facts, Match, Rule, Verdict, first_match
from ingestd.rules.parse import parse_rules, parse_size
from ingestd.rules.templates import TemplateError, parse_template
from ingestd.yamlsource import MarkedList, Report, load

MTIME = datetime(2024, 3, 1, 9, 30, 15, tzinfo=UTC)
RECEIVED = datetime(2024, 3, 2, 14, 5, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def utc_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Templates render dates in local time: pin it to UTC for these tests."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def facts(rel: str = "p1/scan.PDF", fmt: str = "application/pdf", size: int = 1000) -> Facts:
    return Facts(PurePosixPath(rel), "pid-1", fmt, size, MTIME, RECEIVED)


def rules_from(text: str, targets: tuple[str, ...] = ("leyr", "nymbl")) -> tuple[Rule, ...]:
    rules, report = check(text, targets)
    assert [str(p) for p in report.problems] == []
    return rules


def check(
    text: str, targets: tuple[str, ...] = ("leyr", "nymbl")
) -> tuple[tuple[Rule, ...], Report]:
    data, problems = load(text, "c.yaml")
    assert problems == []
    assert isinstance(data, MarkedList)
    report = Report("c.yaml")
    return parse_rules(report, data, targets), report


# --- facts ------------------------------------------------------------------------------------


def test_facts_derived_properties() -> None:
    f = facts("Anna/referrals/2024/scan.final.pdf")
    assert f.name == "scan.final.pdf"
    assert f.stem == "scan.final"
    assert f.ext == ".pdf"
    assert f.folder == "Anna"
    assert f.path_in_folder == "referrals/2024/scan.final.pdf"


def test_ext_has_the_dot_and_is_empty_without_one() -> None:
    assert facts("p/scan.pdf").ext == ".pdf"
    assert facts("p/README").ext == ""
    assert facts("p/README").stem == "README"


# --- templates --------------------------------------------------------------------------------


def test_every_template_field_renders() -> None:
    (rule,) = rules_from(
        """
- match: {filename_regex: '^(?P<kind>lab|xray)_(?P<n>\\d+)'}
  set:
    title: "{name}|{stem}|{ext}|{folder}|{patient_id}|{kind}|{n}"
    type: "{date}|{date:%d.%m.%Y %H:%M:%S}|{received}|{received:%Y-%m-%d %H:%M}"
    target: leyr
    description: "{{literal}} {stem}"
    created_by_id: "by-{folder}"
"""
    )
    decision = first_match([rule], facts("Anna/lab/LAB_42.pdf")).decision
    assert decision is not None
    assert decision.title == "LAB_42.pdf|LAB_42|.pdf|Anna|pid-1|LAB|42"
    assert decision.doc_type == "2024-03-01|01.03.2024 09:30:15|2024-03-02|2024-03-02 14:05"
    assert decision.target == "leyr"
    assert decision.fields == {"description": "{literal} LAB_42", "created_by_id": "by-Anna"}


def test_dates_render_in_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Stockholm")
    time.tzset()
    late = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)  # already 2 March in Stockholm
    assert parse_template("{date:%Y-%m-%d %H:%M}").render({"date": late}) == "2024-03-02 00:30"


def test_template_parse_errors() -> None:
    for text, fragment in [
        ("{name.__class__}", "no attribute or index access"),
        ("{name[0]}", "no attribute or index access"),
        ("{name!r}", "conversions"),
        ("{}", "names no field"),
        ("open {name", "never closed"),
        ("close }", "'}}'"),
    ]:
        with pytest.raises(TemplateError, match=fragment.replace("[", r"\[")):
            parse_template(text)


def test_unknown_field_is_reported_at_the_template_with_did_you_mean() -> None:
    _, report = check(
        """
- name: lab
  set:
    title: "Lab {nmae}"
    type: Lab
    target: leyr
"""
    )
    assert [str(p) for p in report.problems] == [
        "c.yaml:4:12: unknown field {nmae} in rule 'lab'.set.title; did you mean 'name'? "
        "(fields here: {name}, {stem}, {ext}, {folder}, {patient_id}, {date}, {received})"
    ]


def test_attribute_access_and_bad_specs_are_reported() -> None:
    _, report = check(
        """
- set:
    title: "{name.__class__}"
    type: "{stem:>999999999}"
    target: leyr
    description: "{kind}"
"""
    )
    messages = [p.message for p in report.problems]
    assert len(messages) == 3
    assert "no attribute or index access" in messages[0]
    assert "only dates take a format" in messages[1]
    assert messages[2].startswith("unknown field {kind}")


# --- globs and sizes --------------------------------------------------------------------------


def test_path_globs() -> None:
    assert path_regex("lab/**").fullmatch("lab/a.pdf")
    assert path_regex("lab/**").fullmatch("lab/x/y.pdf")
    assert not path_regex("lab/**").fullmatch("labs/a.pdf")
    assert path_regex("referrals/*").fullmatch("referrals/x.pdf")
    assert not path_regex("referrals/*").fullmatch("referrals/x/y.pdf")
    assert path_regex("**/scan?.pdf").fullmatch("scan1.pdf")
    assert path_regex("**/scan?.pdf").fullmatch("a/b/scan2.pdf")
    assert not path_regex("*.pdf").fullmatch("sub/a.pdf")
    assert path_regex("Fax/*").fullmatch("fax/a.tif")
    assert path_regex("[a-c]/*").fullmatch("b/x")
    assert not path_regex("[!a-c]/*").fullmatch("b/x")
    assert path_regex("a+b (1)/*").fullmatch("a+b (1)/x")


def test_filename_glob_is_case_insensitive_fnmatch() -> None:
    assert name_regex("*.pdf").match("SCAN.PDF")
    assert name_regex("lab_??.pdf").match("Lab_01.pdf")
    assert not name_regex("lab_*.pdf").match("scan.PDF")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(500, 500), ("500", 500), ("10 MB", 10_000_000), ("500 KiB", 512_000), ("1.5MiB", 1572864)],
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["ten", "10 XB", -1, True, [1]])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError, match="a size"):
        parse_size(value)


# --- deciding ---------------------------------------------------------------------------------

RULES = """
- name: logs
  match: {filename: "*.log"}
  ignore: true
- name: lab
  match: {filename: "lab_*.pdf", path: "lab/**"}
  set: {title: "Lab {date}", type: Lab Result, target: leyr}
- name: faxes
  match: {path: "fax/**", format: [image/tiff, application/pdf], size: {max: 10 MB}}
  set: {title: "Fax {received:%H:%M}", type: Referral, target: nymbl}
- name: photos
  match: {format: ["image/*"], patient: 'pid-\\d+'}
  set: {title: "Photo {stem}", type: Photo, target: nymbl}
- name: empty-ish
  match: {size: {max: 10}}
  fail: "too small to be a scan: {name}"
- name: rest
  set: {title: "{stem}", type: Scanned, target: leyr}
"""


def test_first_match_wins_with_misses_explained() -> None:
    rules = rules_from(RULES)
    verdict = first_match(rules, facts("p1/scan.PDF"))
    assert verdict.decision is not None
    assert verdict.decision.rule == "rest"
    assert verdict.decision.action == "upload"
    assert verdict.decision.title == "scan"
    assert verdict.misses == (
        ("logs", "filename '*.log' does not match 'scan.PDF'"),
        ("lab", "path 'lab/**' does not match 'scan.PDF'"),
        ("faxes", "path 'fax/**' does not match 'scan.PDF'"),
        ("photos", "format application/pdf is not one of image/*"),
        ("empty-ish", "size 1000 bytes is above max 10"),
    )


def test_earlier_rule_wins_over_later_matching_ones() -> None:
    rules = rules_from(RULES)
    verdict = first_match(rules, facts("p1/lab/2024/LAB_1.pdf"))
    assert verdict.decision is not None
    assert verdict.decision.rule == "lab"
    assert verdict.decision.rule_line == 5
    assert verdict.decision.title == "Lab 2024-03-01"
    assert [name for name, _ in verdict.misses] == ["logs"]


def test_lab_filename_miss_reason() -> None:
    rules = rules_from(RULES)
    verdict = first_match(rules, facts("p1/lab/scan.PDF"))
    assert ("lab", "filename 'lab_*.pdf' does not match 'scan.PDF'") in verdict.misses


def test_ignore_fail_format_size_and_patient() -> None:
    rules = rules_from(RULES)
    ignored = first_match(rules, facts("p1/lab/scanner.LOG")).decision
    assert ignored == Decision("logs", 2, "ignore")
    fax = first_match(rules, facts("p1/fax/in/1.tif", "image/tiff")).decision
    assert fax is not None
    assert (fax.rule, fax.target, fax.title) == ("faxes", "nymbl", "Fax 14:05")
    big_fax = first_match(rules, facts("p1/fax/1.tif", "image/tiff", 20_000_000))
    assert ("faxes", "size 20000000 bytes is above max 10000000") in big_fax.misses
    photo = first_match(rules, facts("p1/IMG_1.jpg", "image/jpeg")).decision
    assert photo is not None
    assert photo.rule == "photos"
    other = Facts(PurePosixPath("p/IMG.jpg"), "x-1", "image/jpeg", 1000, MTIME, RECEIVED)
    other_verdict = first_match(rules, other)
    assert ("photos", "patient id does not match 'pid-\\\\d+'") in other_verdict.misses
    failed = first_match(rules, facts("p1/tiny.txt", "text/plain", 3)).decision
    assert failed is not None
    assert (failed.action, failed.message) == ("fail", "too small to be a scan: tiny.txt")


def test_unknown_format_never_matches_a_format_list() -> None:
    rules = rules_from(RULES)
    verdict = first_match(rules, facts("p1/fax/x.bin", ""))
    assert ("faxes", "format unknown is not one of application/pdf, image/tiff") in verdict.misses


def test_min_size_and_filename_regex_miss() -> None:
    rules = rules_from(
        """
- name: r
  match: {size: {min: 1 KB}, filename_regex: 'x'}
  ignore: true
"""
    )
    too_small = first_match(rules, facts("p1/x.pdf", size=5))
    assert too_small.misses == (("r", "size 5 bytes is below min 1000"),)
    assert first_match(rules, facts(size=5000)).misses == (
        ("r", "filename_regex 'x' finds nothing in 'scan.PDF'"),
    )


def test_no_rule_matches() -> None:
    rules = rules_from("- {name: only, match: {filename: '*.tif'}, ignore: true}\n")
    assert first_match(rules, facts()) == Verdict(
        None, (("only", "filename '*.tif' does not match 'scan.PDF'"),)
    )


def test_no_match_section_is_a_catch_all() -> None:
    (rule,) = rules_from("- set: {title: t, type: y, target: leyr}\n")
    assert rule.name == "rule 1"
    assert rule.match == Match()
    assert first_match([rule], facts()).decision is not None


def test_decision_round_trips_through_json_dict() -> None:
    decision = Decision("lab", 7, "upload", "Lab", "Lab Result", "leyr", {"description": "d"})
    again = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
    assert again == decision
    with pytest.raises(ValueError, match="rule_line"):
        Decision.from_dict({"rule": "x", "rule_line": "7", "action": "upload"})
    with pytest.raises(ValueError, match="action"):
        Decision.from_dict({"rule": "x", "rule_line": 7, "action": "explode"})


# --- checking the rules section -----------------------------------------------------------------


def test_rule_section_problems_are_all_reported_at_their_lines() -> None:
    _, report = check(
        """
- name: a
  match: {filename_regex: '(unclosed', size: {max: lots}}
  set: {title: t, type: y, target: leyer}
- name: a
  ignore: true
  fail: "no"
- name: c
- name: d
  match: {fromat: [application/pdf]}
  set: {title: t}
- name: e
  match: {format: [pdf], filename_regex: '(?P<name>x)'}
  ignore: true
- just a string
"""
    )
    got = [(p.line, p.message) for p in report.problems]
    assert got == [
        (
            3,
            "rule 'a'.match.size.max: a size is a number of bytes or a string like '10 MB' or "
            "'500 KiB'",
        ),
        (
            3,
            "rule 'a'.match.filename_regex is not a valid regex: "
            "missing ), unterminated subpattern",
        ),
        (4, "rule 'a'.set.target: no target named 'leyer'; did you mean 'leyr'?"),
        (5, "rule name 'a' is used twice (first at line 2)"),
        (5, "rule 'a' has ignore and fail; a rule does only one"),
        (8, "rule 'c' needs set: (to upload), ignore: true or fail: MESSAGE"),
        (10, "unknown key 'fromat' in rule 'd'.match; did you mean 'format'?"),
        (11, "rule 'd'.set is missing the required key 'type'"),
        (11, "rule 'd'.set is missing the required key 'target'"),
        (13, "rule 'e'.match.format: 'pdf' is not a MIME type like application/pdf or image/*"),
        (
            13,
            "rule 'e'.match.filename_regex: group 'name' would hide the field {name}; "
            "rename the group",
        ),
        (15, "rules[6] must be a mapping, not a string"),
    ]


def test_default_names_collide_with_explicit_ones() -> None:
    _, report = check("- {ignore: true}\n- {name: rule 1, ignore: true}\n")
    assert [p.message for p in report.problems] == [
        "rule name 'rule 1' is used twice (first at line 1)"
    ]


def test_unknown_rule_key_did_you_mean() -> None:
    _, report = check("- name: x\n  ignroe: true\n")
    assert str(report.problems[0]) == (
        "c.yaml:2:3: unknown key 'ignroe' in rule 'x'; did you mean 'ignore'?"
    )


def test_filename_with_a_folder_path_with_a_root_and_an_empty_set() -> None:
    _, report = check(
        """
- match: {filename: "lab/*.pdf", path: "/lab/**"}
  ignore: true
- name: empty set
  set:
"""
    )
    assert [(p.line, p.message) for p in report.problems] == [
        (2, "rule 'rule 1'.match.filename is matched against the name only; use path: for folders"),
        (2, "rule 'rule 1'.match.path is relative to the patient folder: drop the leading '/'"),
        (5, "rule 'empty set'.set is empty: give title, type, target"),
    ]
