"""The rules language: which files go where, under what title and type.

Owns the `rules:` section (parsing and checking it), the facts a rule looks at, matching (first
match wins, with a reason for every rule that did not match), templates (`{stem}`, `{date:%Y}`,
regex groups) rendered by our own small renderer, and the `Decision` the journal keeps for a
claimed file.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

from ingestd.names import valid_text
from ingestd.yamlsource import Mark, MarkedDict, MarkedList, Report, did_you_mean, kind_of

ACTIONS = ("upload", "ignore", "fail")
BUILTIN_FIELDS = ("name", "stem", "ext", "folder", "patient_id", "date", "received")
DATED_FIELDS = frozenset({"date", "received"})
DEFAULT_DATE_FORMAT = "%Y-%m-%d"
RULE_KEYS = ("name", "match", "set", "ignore", "fail")
MATCH_KEYS = ("filename", "filename_regex", "path", "format", "size", "patient")
SET_KEYS = ("title", "type", "target", "description", "created_by_id")
REQUIRED_SET_KEYS = ("title", "type", "target")
FIELD_SET_KEYS = ("description", "created_by_id")  # sent as per-target fields
MIME = re.compile(r"[A-Za-z0-9][\w.+-]*/(?:[A-Za-z0-9][\w.+-]*|\*)")
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


# --- templates ---------------------------------------------------------------------------------


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says what to write instead."""


@dataclass(frozen=True)
class Field:
    """One `{name}` or `{name:spec}` in a template."""

    name: str
    spec: str | None = None


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and fields, in order."""

    source: str
    parts: tuple[str | Field, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(part for part in self.parts if isinstance(part, Field))

    def render(self, values: Mapping[str, str | datetime | None]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = values.get(part.name)
            if isinstance(value, datetime):
                # Titles are read by clinic staff: dates in the server's local time, not UTC.
                out.append(value.astimezone().strftime(part.spec or DEFAULT_DATE_FORMAT))
            elif value is not None:
                out.append(value)
        return "".join(out)


def _parse_field(body: str) -> Field:
    name, colon, spec = body.partition(":")
    if "!" in name:
        raise TemplateError(f"{{{body}}}: conversions like !r are not allowed")
    if not name:
        raise TemplateError("{} names no field; write a field like {name}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise TemplateError(
            f"{{{body}}}: only plain field names are allowed (no attribute or index access)"
        )
    return Field(name, spec if colon else None)


def parse_template(text: str) -> Template:
    """Parse `text`; `{{` and `}}` are literal braces. Raises TemplateError."""
    parts: list[str | Field] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "{}" and text.startswith(char * 2, index):
            literal.append(char)
            index += 2
        elif char == "}":
            raise TemplateError("a single '}' must be written '}}'")
        elif char == "{":
            end = text.find("}", index)
            if end < 0:
                raise TemplateError("a '{' is never closed; write '{{' for a literal brace")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_field(text[index + 1 : end]))
            index = end + 1
        else:
            literal.append(char)
            index += 1
    if literal:
        parts.append("".join(literal))
    return Template(text, tuple(parts))


def template_errors(template: Template, known: Collection[str], where: str) -> list[str]:
    """What is wrong with the fields of `template`, given the names it may use."""
    errors: list[str] = []
    for item in template.fields:
        if item.name not in known:
            hint = did_you_mean(item.name, known)
            names = ", ".join("{" + name + "}" for name in known) or "none"
            errors.append(f"unknown field {{{item.name}}} in {where}{hint} (fields here: {names})")
        elif item.spec is not None and item.name not in DATED_FIELDS:
            errors.append(f"{{{item.name}:...}} in {where}: only dates take a format")
        elif item.spec is not None:
            try:
                datetime(2000, 1, 2, 3, 4, 5, tzinfo=UTC).strftime(item.spec)
            except ValueError:
                errors.append(f"{{{item.name}:{item.spec}}} in {where}: not a strftime format")
    return errors


def check_template(
    report: Report, at: Mark, text: str, known: Collection[str], where: str
) -> Template | None:
    """Parse and check one template, reporting at `at`; None when it is not usable."""
    try:
        template = parse_template(text)
    except TemplateError as error:
        report.error(at, f"{where}: {error}")
        return None
    errors = template_errors(template, known, where)
    for message in errors:
        report.error(at, message)
    return None if errors else template


# --- globs and sizes ---------------------------------------------------------------------------


def _char_class(pattern: str, start: int) -> tuple[str, int] | None:
    """The regex for a `[...]` class starting at `start`, and the index after it."""
    end = start + 1
    if end < len(pattern) and pattern[end] in "!^":
        end += 1
    if end < len(pattern) and pattern[end] == "]":
        end += 1
    end = pattern.find("]", end)
    if end < 0:
        return None
    body = pattern[start + 1 : end].replace("\\", "\\\\")
    if body[:1] in ("!", "^"):
        body = "^/" + body[1:]
    return f"[{body}]", end + 1


@functools.lru_cache(maxsize=256)
def path_regex(glob: str) -> re.Pattern[str]:
    """A glob over `/`-separated paths: `*` and `?` stay within a folder, `**` crosses folders."""
    out: list[str] = []
    index = 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif glob[index] == "*":
            out.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            out.append("[^/]")
            index += 1
        elif glob[index] == "[" and (found := _char_class(glob, index)):
            out.append(found[0])
            index = found[1]
        else:
            out.append(re.escape(glob[index]))
            index += 1
    # Case-insensitive like `filename`: scanners and SMB clients vary the case of folder names.
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=256)
def name_regex(glob: str) -> re.Pattern[str]:
    """A case-insensitive fnmatch glob on a file name."""
    return re.compile(fnmatch.translate(glob), re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a string like `10 MB` (10^6) or `500 KiB` (2^10); ValueError else."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '10 MB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str) and (found := SIZE.fullmatch(value)):
        unit = SIZE_UNITS.get(found.group(2).lower())
        if unit is not None:
            return int(float(found.group(1)) * unit)
    raise ValueError("a size is a number of bytes or a string like '10 MB' or '500 KiB'")


# --- facts, decisions, rules ---------------------------------------------------------------------


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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Decision:
        """The inverse of `to_dict`; ValueError when `data` is not one."""
        texts = {}
        for key in ("rule", "action", "title", "doc_type", "target", "message"):
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
        )


def decide(rules: Iterable[Rule], facts: Facts) -> Verdict:
    """The first rule whose criteria all hold decides; earlier rules say why they did not."""
    misses: list[tuple[str, str]] = []
    for rule in rules:
        reason, groups = rule.match.miss(facts)
        if reason:
            misses.append((rule.name, reason))
            continue
        return Verdict(rule.decision(facts, groups), tuple(misses))
    return Verdict(None, tuple(misses))


# --- the `rules:` section ------------------------------------------------------------------------


def _regex(
    report: Report, parent: MarkedDict, key: str, where: str, flags: int = 0
) -> re.Pattern[str] | None:
    text = report.string(parent, key, where)
    if text is None:
        return None
    try:
        return re.compile(text, flags)
    except re.error as error:
        report.error(parent.value_mark(key), f"{where} is not a valid regex: {error.msg}")
        return None


def _size(report: Report, parent: MarkedDict, key: str, where: str) -> int | None:
    if parent.get(key) is None:
        return None
    try:
        return parse_size(parent[key])
    except ValueError as error:
        report.error(parent.value_mark(key), f"{where}: {error}")
        return None


def _match(report: Report, node: MarkedDict, where: str) -> tuple[Match, tuple[str, ...]]:
    """The criteria, and the regex group names they offer templates."""
    report.keys(node, where, MATCH_KEYS)
    formats = report.strings(node, "format", f"{where}.format")
    for index, mime in enumerate(formats or []):
        if not MIME.fullmatch(mime):
            at = node["format"].item_mark(index) if isinstance(node["format"], MarkedList) else None
            report.error(
                at or node.value_mark("format"),
                f"{where}.format: {mime!r} is not a MIME type like application/pdf or image/*",
            )
    sizes = report.mapping(node, "size", f"{where}.size")
    min_size = max_size = None
    if sizes is not None:
        report.keys(sizes, f"{where}.size", ("min", "max"))
        min_size = _size(report, sizes, "min", f"{where}.size.min")
        max_size = _size(report, sizes, "max", f"{where}.size.max")
        if min_size is not None and max_size is not None and min_size > max_size:
            report.error(sizes.mark, f"{where}.size: min is larger than max")
    filename = report.string(node, "filename", f"{where}.filename")
    if filename is not None and "/" in filename:
        report.error(
            node.value_mark("filename"),
            f"{where}.filename is matched against the name only; use path: for folders",
        )
    path = report.string(node, "path", f"{where}.path")
    if path is not None and path.startswith("/"):
        report.error(
            node.value_mark("path"),
            f"{where}.path is relative to the patient folder: drop the leading '/'",
        )
    criteria = Match(
        filename=filename,
        filename_regex=_regex(report, node, "filename_regex", f"{where}.filename_regex", re.I),
        path=path,
        formats=frozenset(m.lower() for m in formats) if formats is not None else None,
        min_size=min_size,
        max_size=max_size,
        patient=_regex(report, node, "patient", f"{where}.patient"),
    )
    groups: tuple[str, ...] = ()
    if criteria.filename_regex is not None:
        groups = tuple(criteria.filename_regex.groupindex)
        for group in groups:
            if group in BUILTIN_FIELDS:
                report.error(
                    node.value_mark("filename_regex"),
                    f"{where}.filename_regex: group {group!r} would hide the field {{{group}}}; "
                    "rename the group",
                )
    return criteria, groups


def _templates(
    report: Report, node: MarkedDict, where: str, known: tuple[str, ...], targets: Collection[str]
) -> tuple[str, dict[str, Template]]:
    """The target name and the templates of a `set:` mapping."""
    report.keys(node, where, SET_KEYS, REQUIRED_SET_KEYS)
    target = report.string(node, "target", f"{where}.target") or ""
    if target and target not in targets:
        hint = did_you_mean(target, targets)
        report.error(node.value_mark("target"), f"{where}.target: no target named {target!r}{hint}")
    templates: dict[str, Template] = {}
    for key in SET_KEYS:
        text = report.string(node, key, f"{where}.{key}") if key != "target" else None
        if text is None:
            continue
        at = node.value_mark(key)
        if (template := check_template(report, at, text, known, f"{where}.{key}")) is not None:
            templates[key] = template
    return target, templates


def _rule(report: Report, node: MarkedDict, name: str, targets: Collection[str]) -> Rule | None:
    where = f"rule {name!r}"
    line = node.mark.line
    report.keys(node, where, RULE_KEYS)
    match_node = report.mapping(node, "match", f"{where}.match")
    criteria, groups = _match(report, match_node, f"{where}.match") if match_node else (Match(), ())
    known = (*BUILTIN_FIELDS, *groups)
    ignore = report.boolean(node, "ignore", f"{where}.ignore")
    fail = report.string(node, "fail", f"{where}.fail")
    set_node = report.mapping(node, "set", f"{where}.set")
    chosen = [key for key, on in (("set", "set" in node), ("ignore", ignore), ("fail", fail)) if on]
    if len(chosen) > 1:
        report.error(node.mark, f"{where} has {' and '.join(chosen)}; a rule does only one")
        return None
    if not chosen:
        if "fail" not in node and "set" not in node:
            report.error(
                node.mark, f"{where} needs set: (to upload), ignore: true or fail: MESSAGE"
            )
        return None
    if ignore:
        return Rule(name, line, criteria, "ignore")
    if fail is not None:
        message = check_template(report, node.value_mark("fail"), fail, known, f"{where}.fail")
        return Rule(name, line, criteria, "fail", message=message)
    if set_node is None:
        if node["set"] is None:
            report.error(node.value_mark("set"), f"{where}.set is empty: give title, type, target")
        return None
    target, templates = _templates(report, set_node, f"{where}.set", known, targets)
    return Rule(name, line, criteria, "upload", target, templates)


def parse_rules(report: Report, items: MarkedList, targets: Collection[str]) -> tuple[Rule, ...]:
    """The `rules:` list; every problem goes to `report`. `targets`: the declared target names."""
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, node in enumerate(items):
        number = index + 1
        if not isinstance(node, MarkedDict):
            report.error(
                items.item_mark(index), f"rules[{number}] must be a mapping, not {kind_of(node)}"
            )
            continue
        name = report.string(node, "name", f"rules[{number}].name") or f"rule {number}"
        if name in names:
            report.error(
                node.key_mark("name"),
                f"rule name {name!r} is used twice (first at line {names[name]})",
            )
        else:
            names[name] = node.mark.line
        rule = _rule(report, node, name, targets)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)
