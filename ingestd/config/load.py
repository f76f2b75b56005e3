"""The one YAML config file: `load_config` turns it into frozen settings or one `ConfigError`.

Owns the top level, `paths:` and `watch:`; `targets:` (config/targets.py), `patients:` and
`rules:` are checked by their own modules. Every problem is collected (as `FILE:LINE:COL:
message`) before raising once; warnings alone do not raise. No message echoes a value, so a
secret never ends up in a log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ingestd.config.journal import parse_journal
from ingestd.config.model import (
    Config,
    ConfigError,
    Paths,
    SourceConfig,
    VerifySchedule,
    WatchConfig,
)
from ingestd.config.secrets import readable_by_others, resolve_tree
from ingestd.config.statuspage import parse_listen, parse_status_page
from ingestd.config.targets import loopback, parse_targets
from ingestd.rules.parse import parse_rules
from ingestd.rules.patients import PatientMap, parse_patients
from ingestd.yamlsource import START, MarkedDict, MarkedList, Problem, Report, load, yaml_type

TOP_KEYS = (
    "paths", "targets", "watch", "patients", "rules", "metrics", "verify", "status_page",
    "journal",
)  # fmt: skip
METRICS_KEYS = ("listen",)
VERIFY_KEYS = ("every", "sample")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PATH_KEYS = ("inbox", "done", "failed", "state")
WATCH_KEYS = (
    "settle_seconds",
    "scan_interval_seconds",
    "empty_fail_seconds",
    "unknown_type_grace_seconds",
    "claim_lease_seconds",
    "poll",
    "sources",
)
SOURCE_KEYS = ("folder", "settle_seconds", "poll")


def load_config(
    path: str, env: Mapping[str, str] | None = None, *, in_service: bool = True
) -> Config:
    """Read, check and build the config at `path`; raise ConfigError listing every problem.

    `env` (default: os.environ) serves `${NAME}` references and `CREDENTIALS_DIRECTORY`.
    `in_service=False` (offline commands): a `${credential:…}` that only systemd can provide
    is a warning, not an error.
    """
    report = Report(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError(
            [Problem(path, 1, 1, f"cannot read the file: {error.strerror}")]
        ) from None
    tree, problems = load(data, path)
    report.problems.extend(problems)
    if tree is None and not problems:
        report.error(START, "the config file is empty")
    elif tree is not None and not isinstance(tree, MarkedDict):
        report.error(START, f"the config must be a mapping of sections, not {yaml_type(tree)}")
    if not isinstance(tree, MarkedDict):
        raise ConfigError(report.problems)
    resolve_tree(
        tree,
        os.environ if env is None else env,
        report,
        exposed=readable_by_others(path),
        in_service=in_service,
    )
    config = _build(report, tree)
    errors = report.errors
    if errors or config is None:
        raise ConfigError(sorted(report.problems, key=lambda p: (p.line, p.col)))
    return config


def _build(report: Report, tree: MarkedDict) -> Config | None:
    report.keys(tree, "the config", TOP_KEYS, ("paths", "targets", "rules"))
    for key in ("paths", "targets", "rules"):
        if key in tree and tree[key] is None:
            report.error(tree.value_mark(key), f"{key} is empty")
    paths_node = report.mapping(tree, "paths", "paths")
    paths = _paths(report, paths_node) if paths_node is not None else None
    targets_node = report.mapping(tree, "targets", "targets")
    targets = parse_targets(report, targets_node) if targets_node is not None else {}
    watch_node = report.mapping(tree, "watch", "watch")
    watch = _watch(report, watch_node) if watch_node is not None else WatchConfig()
    patients_node = report.mapping(tree, "patients", "patients")
    patients = parse_patients(report, patients_node) if patients_node is not None else PatientMap()
    rules_node = report.sequence(tree, "rules", "rules")
    names = list(targets_node or {})
    rules = parse_rules(report, rules_node, names) if rules_node is not None else ()
    if rules_node is not None and not rules_node:
        report.warn(rules_node.mark, "rules is empty: every file will fail with no_rule")
    metrics_node = report.mapping(tree, "metrics", "metrics")
    listen = _metrics_listen(report, metrics_node) if metrics_node is not None else None
    verify_node = report.mapping(tree, "verify", "verify")
    verify = _verify(report, verify_node) if verify_node is not None else None
    page_node = report.mapping(tree, "status_page", "status_page")
    page = parse_status_page(report, page_node) if page_node is not None else None
    journal_node = report.mapping(tree, "journal", "journal")
    journal = parse_journal(report, journal_node) if journal_node is not None else None
    if paths is None:
        return None
    return Config(
        status_page=page,
        journal=journal,
        metrics_listen=listen,
        verify=verify,
        file=report.file,
        paths=paths,
        targets=MappingProxyType(targets),
        watch=watch,
        patients=patients,
        rules=rules,
        warnings=tuple(sorted(report.warnings, key=lambda p: (p.line, p.col))),
    )


def _paths(report: Report, node: MarkedDict) -> Paths | None:
    report.keys(node, "paths", PATH_KEYS, PATH_KEYS)
    base = os.path.dirname(os.path.abspath(report.file))
    found: dict[str, Path] = {}
    for key in PATH_KEYS:
        text = report.string(node, key, f"paths.{key}")
        if text is not None:
            found[key] = Path(os.path.abspath(os.path.join(base, os.path.expanduser(text))))
    folders = [key for key in ("inbox", "done", "failed") if key in found]
    for index, inner in enumerate(folders):
        for outer in folders[:index]:
            if found[inner] == found[outer]:
                report.error(node.value_mark(inner), f"paths.{inner} is the same as paths.{outer}")
        for outer in folders:
            if found[outer] in found[inner].parents:
                report.error(node.value_mark(inner), f"paths.{inner} is inside paths.{outer}")
    if "state" in found and "inbox" in found and found["inbox"] in found["state"].parents:
        below = found["state"].relative_to(found["inbox"]).parts
        if not any(part.startswith(".") for part in below):
            report.error(
                node.value_mark("state"),
                "paths.state must not be inside paths.inbox (unless in a hidden folder)",
            )
    if "state" in found and os.path.isdir(found["state"]):
        report.error(
            node.value_mark("state"),
            "paths.state is a folder; it names the journal's file, e.g. "
            f"{found['state'] / 'journal.sqlite'}",
        )
    if len(found) < len(PATH_KEYS):
        return None
    return Paths(found["inbox"], found["done"], found["failed"], found["state"])


def _watch(report: Report, node: MarkedDict) -> WatchConfig:
    report.keys(node, "watch", WATCH_KEYS)
    values: dict[str, Any] = {}
    for key in WATCH_KEYS[:5]:  # the numbers
        number = report.number(node, key, f"watch.{key}")
        if number is None:
            continue
        positive = key in ("scan_interval_seconds", "claim_lease_seconds")
        if number < 0 or (positive and number == 0):
            bound = "greater than 0" if positive else "0 or more"
            report.error(node.value_mark(key), f"watch.{key} must be {bound}")
        else:
            values[key] = float(number)
    poll = report.boolean(node, "poll", "watch.poll")
    if poll is not None:
        values["poll"] = poll
    sources: list[SourceConfig] = []
    items = report.sequence(node, "sources", "watch.sources")
    for index, item in enumerate(items or []):
        assert isinstance(items, MarkedList)
        where = f"watch.sources[{index + 1}]"
        if not isinstance(item, MarkedDict):
            report.error(
                items.item_mark(index), f"{where} must be a mapping, not {yaml_type(item)}"
            )
            continue
        source = _source(report, item, where)
        if source is not None:
            sources.append(source)
    return WatchConfig(**values, sources=tuple(sources))


def _source(report: Report, node: MarkedDict, where: str) -> SourceConfig | None:
    report.keys(node, where, SOURCE_KEYS, ("folder",))
    glob = report.string(node, "folder", f"{where}.folder")
    settle = report.number(node, "settle_seconds", f"{where}.settle_seconds")
    if settle is not None and settle < 0:
        report.error(node.value_mark("settle_seconds"), f"{where}.settle_seconds must be 0 or more")
        settle = None
    poll = report.boolean(node, "poll", f"{where}.poll")
    if glob is None:
        return None
    return SourceConfig(glob.strip("/"), None if settle is None else float(settle), poll)


def _metrics_listen(report: Report, node: MarkedDict) -> tuple[str, int] | None:
    """`listen: 127.0.0.1:9464` (or `[::1]:9464`, `localhost:9464`); loopback only."""
    report.keys(node, "metrics", METRICS_KEYS, METRICS_KEYS)
    if "listen" not in node:
        return None
    at = node.value_mark("listen")
    listen = parse_listen(node["listen"])
    if listen is None:
        report.error(at, "metrics.listen must be HOST:PORT, e.g. 127.0.0.1:9464")
        return None
    if not loopback(listen[0]):
        report.error(at, "metrics.listen must be a loopback address (127.0.0.1, ::1, localhost)")
        return None
    return listen


def _verify(report: Report, node: MarkedDict) -> VerifySchedule | None:
    """`verify: {every: 24h, sample: 1%}`: every as seconds or with s/m/h/d, sample as a
    percentage or a fraction."""
    report.keys(node, "verify", VERIFY_KEYS, VERIFY_KEYS)
    every = _amount(node.get("every"), _UNITS, 1.0)
    if "every" in node and (every is None or every < 60):
        report.error(node.value_mark("every"), "verify.every must be 60 s or more, e.g. 24h")
        every = None
    sample = _amount(node.get("sample"), {"%": 0.01}, 1.0)
    if "sample" in node and (sample is None or not 0 < sample <= 1):
        report.error(node.value_mark("sample"), "verify.sample must be above 0 and at most 100%")
        sample = None
    if every is None or sample is None:
        return None
    return VerifySchedule(every, sample)


def _amount(value: object, units: Mapping[str, float], bare: float) -> float | None:
    """`24h`, `90 m`, `1%`, or a bare number (times `bare`); None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) * bare
    text = str(value).strip()
    scale = bare
    if text and text[-1] in units:
        text, scale = text[:-1].strip(), units[text[-1]]
    try:
        number = float(text)
    except ValueError:
        return None
    return number * scale if number == number and abs(number) != float("inf") else None
