"""Which patient a folder belongs to: the optional `patients:` section and its lookup.

Owns `PatientMap` (explicit folder names first, then regex patterns whose named groups fill an id
template, else the folder name itself) and the Luhn check of Swedish personal numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ingestd.rules.templates import Template, check_template
from ingestd.yamlsource import MarkedDict, Report


@dataclass(frozen=True)
class PatientPattern:
    """A folder-name regex (full match) and the id template its named groups fill."""

    folder: re.Pattern[str]
    id: Template


@dataclass(frozen=True)
class PatientMap:
    """Folder name → patient id; with nothing configured the folder name is the id."""

    folders: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    patterns: tuple[PatientPattern, ...] = ()

    def patient_id(self, folder: str) -> str | None:
        """The patient id for a patient folder's name; total: falls back to the name itself."""
        if folder in self.folders:
            return self.folders[folder]
        for pattern in self.patterns:
            found = pattern.folder.fullmatch(folder)
            if found is None:
                continue
            groups = found.groupdict()
            # A template group that did not take part cannot give an id: try the next pattern.
            if all(groups.get(f.name) is not None for f in pattern.id.fields):
                return pattern.id.render(groups)
        return folder


def parse_patients(report: Report, node: MarkedDict) -> PatientMap:
    """The `patients:` mapping; every problem goes to `report`."""
    report.keys(node, "patients", ("folders", "patterns"))
    folders: dict[str, str] = {}
    folders_node = report.mapping(node, "folders", "patients.folders")
    for name in folders_node or {}:
        assert folders_node is not None
        # The folder name is not echoed: it may well be a personal number.
        patient = report.string(folders_node, name, "a patients.folders entry")
        if patient is not None:
            folders[name] = patient
    patterns: list[PatientPattern] = []
    for where, item in report.mappings(node, "patterns", "patients.patterns"):
        pattern = _pattern(report, item, where)
        if pattern is not None:
            patterns.append(pattern)
    return PatientMap(MappingProxyType(folders), tuple(patterns))


def _pattern(report: Report, node: MarkedDict, where: str) -> PatientPattern | None:
    report.keys(node, where, ("folder", "id"), ("folder", "id"))
    regex_text = report.string(node, "folder", f"{where}.folder")
    id_text = report.string(node, "id", f"{where}.id")
    if regex_text is None:
        return None
    try:
        regex = re.compile(regex_text)
    except re.error as error:
        report.error(node.value_mark("folder"), f"{where}.folder is not a valid regex: {error.msg}")
        return None
    if id_text is None:
        return None
    groups = tuple(regex.groupindex)
    template = check_template(report, node.value_mark("id"), id_text, groups, f"{where}.id")
    if template is None:
        return None
    if any(f.spec is not None for f in template.fields):
        report.error(node.value_mark("id"), f"{where}.id: fields here take no format")
        return None
    return PatientPattern(regex, template)
