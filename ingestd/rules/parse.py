"""The `rules:` section of the config: parsing and checking it, every problem with its
file:line:col, into `Rule`s (sizes by ingestd.sizes)."""

from __future__ import annotations

import re
from collections.abc import Collection

from ingestd.rules.conversion import rule_convert
from ingestd.rules.matching import Match, Rule
from ingestd.rules.templates import BUILTIN_FIELDS, Template, check_template
from ingestd.sizes import parse_size
from ingestd.yamlsource import MarkedDict, MarkedList, Report, did_you_mean, yaml_type

RULE_KEYS = ("name", "match", "set", "ignore", "fail")
MATCH_KEYS = ("filename", "filename_regex", "path", "format", "size", "patient")
SET_KEYS = ("title", "type", "target", "description", "created_by_id", "category", "convert")
REQUIRED_SET_KEYS = ("title", "type", "target")
MIME = re.compile(r"[A-Za-z0-9][\w.+-]*/(?:[A-Za-z0-9][\w.+-]*|\*)")


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
        if key in ("target", "convert"):
            continue  # not templates: a name, and a conversion (rules.conversion)
        text = report.string(node, key, f"{where}.{key}")
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
    convert = rule_convert(report, set_node, f"{where}.set", criteria.formats)
    return Rule(name, line, criteria, "upload", target, templates, convert=convert)


def parse_rules(report: Report, items: MarkedList, targets: Collection[str]) -> tuple[Rule, ...]:
    """The `rules:` list; every problem goes to `report`. `targets`: the declared target names."""
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, node in enumerate(items):
        number = index + 1
        if not isinstance(node, MarkedDict):
            report.error(
                items.item_mark(index), f"rules[{number}] must be a mapping, not {yaml_type(node)}"
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
