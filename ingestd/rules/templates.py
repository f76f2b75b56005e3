"""Rule templates: `{stem}`, `{date:%Y}`, regex groups — parsed once, checked against the fields
a rule can give, and rendered by our own small renderer (never str.format on user input)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ingestd.yamlsource import Mark, Report, did_you_mean

BUILTIN_FIELDS = ("name", "stem", "ext", "folder", "patient_id", "date", "received")
DATED_FIELDS = frozenset({"date", "received"})
DEFAULT_DATE_FORMAT = "%Y-%m-%d"


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
