"""Matching: the facts a rule looks at, what a rule matches, the first rule that matches (with
a reason for every rule that did not), and the `Decision` the journal keeps for a claimed
file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

from ingestd.names import valid_text
from ingestd.rules.globs import name_regex, path_regex
from ingestd.rules.templates import Template

ACTIONS = ("upload", "ignore", "fail")
# Sent as per-target fields (`category`: a FHIR DocumentReference's, `system|code|display`).
FIELD_SET_KEYS = ("description", "created_by_id", "category")


@dataclass(frozen=True)
class Facts:
    """What a rule can look at for one inbox file (the path is relative to the inbox root)."""

    rel_path: PurePosixPath
    patient_id: str
    format: str  # MIME detected from content; "" when unknown
    size: int
    mtime: datetime  # UTC
    received: datetime  # UTC

    @property
    def name(self) -> str:
        return self.rel_path.name

    @property
    def stem(self) -> str:
        return self.rel_path.stem

    @property
    def ext(self) -> str:
        return self.rel_path.suffix

    @property
    def folder(self) -> str:
        return self.rel_path.parts[0] if self.rel_path.parts else ""

    @property
    def path_in_folder(self) -> str:
        return "/".join(self.rel_path.parts[1:])

    def values(self) -> dict[str, str | datetime | None]:
        # Titles and descriptions go to the EHR: a name that is not UTF-8 must not break them.
        return {
            "name": valid_text(self.name),
            "stem": valid_text(self.stem),
            "ext": valid_text(self.ext),
            "folder": valid_text(self.folder),
            "patient_id": self.patient_id,
            "date": self.mtime,
            "received": self.received,
        }


@dataclass(frozen=True)
class Decision:
    """What to do with one file; kept in the journal so a claimed file keeps it across reloads."""

    rule: str
    rule_line: int
    action: str  # upload | ignore | fail
    title: str = ""
    doc_type: str = ""
    target: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)  # description, created_by_id
    message: str = ""  # for fail
    convert: str = ""  # "pdf": converted before it is sent (rules.conversion)
    convert_why: str = ""  # the rule or target that says so

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "rule_line": self.rule_line,
            "action": self.action,
            "title": self.title,
            "doc_type": self.doc_type,
            "target": self.target,
            "fields": dict(self.fields),
            "message": self.message,
            "convert": self.convert,
            "convert_why": self.convert_why,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Decision:
        """The inverse of `to_dict`; ValueError when `data` is not one."""
        texts = {}
        # A decision journalled before conversion existed has no `convert`: "" (none).
        for key in (
            "rule",
            "action",
            "title",
            "doc_type",
            "target",
            "message",
            "convert",
            "convert_why",
        ):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"decision {key} is not a string")
            texts[key] = value
        line = data.get("rule_line")
        fields = data.get("fields", {})
        if isinstance(line, bool) or not isinstance(line, int):
            raise ValueError("decision rule_line is not an integer")
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise ValueError("decision fields is not a mapping of strings")
        if texts["action"] not in ACTIONS:
            raise ValueError("decision action is not upload, ignore or fail")
        return cls(rule_line=line, fields=dict(fields), **texts)


@dataclass(frozen=True)
class Verdict:
    """The decision (None: no rule matched) and why each rule before it did not match."""

    decision: Decision | None
    misses: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Match:
    """A rule's criteria; each one set must hold, none set matches every file."""

    filename: str | None = None  # case-insensitive glob on the name
    filename_regex: re.Pattern[str] | None = None  # searched, case-insensitive
    path: str | None = None  # glob on path_in_folder
    formats: frozenset[str] | None = None  # MIME types, `type/*` allowed
    min_size: int | None = None
    max_size: int | None = None
    patient: re.Pattern[str] | None = None  # full match on the patient id

    def miss(self, facts: Facts) -> tuple[str, dict[str, str]]:
        """("", regex groups) when `facts` match, else (the reason, {})."""
        if self.path is not None and not path_regex(self.path).fullmatch(facts.path_in_folder):
            return f"path {self.path!r} does not match {facts.path_in_folder!r}", {}
        if self.filename is not None and not name_regex(self.filename).match(facts.name):
            return f"filename {self.filename!r} does not match {facts.name!r}", {}
        groups: dict[str, str] = {}
        if self.filename_regex is not None:
            found = self.filename_regex.search(facts.name)
            if not found:
                return (
                    f"filename_regex {self.filename_regex.pattern!r} finds nothing in "
                    f"{facts.name!r}",
                    {},
                )
            groups = {k: v for k, v in found.groupdict().items() if v is not None}
        if self.formats is not None and not _format_ok(self.formats, facts.format):
            wanted = ", ".join(sorted(self.formats))
            return f"format {facts.format or 'unknown'} is not one of {wanted}", {}
        if self.min_size is not None and facts.size < self.min_size:
            return f"size {facts.size} bytes is below min {self.min_size}", {}
        if self.max_size is not None and facts.size > self.max_size:
            return f"size {facts.size} bytes is above max {self.max_size}", {}
        if self.patient is not None and not self.patient.fullmatch(facts.patient_id):
            return f"patient id does not match {self.patient.pattern!r}", {}
        return "", groups


def _format_ok(formats: frozenset[str], mime: str) -> bool:
    if not mime:
        return False
    mime = mime.lower()
    return mime in formats or mime.split("/", 1)[0] + "/*" in formats


@dataclass(frozen=True)
class Rule:
    """One entry of `rules:`; `line` is where it starts in the config file (1-based)."""

    name: str
    line: int
    match: Match = field(default_factory=Match)
    action: str = "upload"  # upload | ignore | fail
    target: str = ""  # a name from `targets:`, for upload
    templates: Mapping[str, Template] = field(default_factory=dict)  # title, type, description, ...
    message: Template | None = None  # for fail
    convert: str = ""  # set.convert: "pdf" forces conversion of the files it matches

    def decision(self, facts: Facts, groups: Mapping[str, str]) -> Decision:
        values = {**groups, **facts.values()}
        rendered = {key: t.render(values) for key, t in self.templates.items()}
        return Decision(
            rule=self.name,
            rule_line=self.line,
            action=self.action,
            title=rendered.get("title", ""),
            doc_type=rendered.get("type", ""),
            target=self.target,
            fields={key: rendered[key] for key in FIELD_SET_KEYS if key in rendered},
            message=self.message.render(values) if self.message else "",
            convert=self.convert,
            convert_why=f"rule '{self.name}' sets convert: pdf" if self.convert else "",
        )


def first_match(rules: Iterable[Rule], facts: Facts) -> Verdict:
    """The first rule whose criteria all hold decides; earlier rules say why they did not."""
    misses: list[tuple[str, str]] = []
    for rule in rules:
        reason, groups = rule.match.miss(facts)
        if reason:
            misses.append((rule.name, reason))
            continue
        return Verdict(rule.decision(facts, groups), tuple(misses))
    return Verdict(None, tuple(misses))
