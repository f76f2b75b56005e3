"""The one YAML config file: `load_config` turns it into frozen settings or one `ConfigError`.

Owns the top level, `paths:`, `targets:` and `watch:`; `patients:` and `rules:` are checked by
their own modules. Every problem is collected (as `FILE:LINE:COL: message`) before raising once;
warnings alone do not raise. No message echoes a value, so a secret never ends up in a log.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ingestd.config.conversion import KEY as CONVERT_TO_PDF
from ingestd.config.conversion import parse_convert_to_pdf
from ingestd.config.secrets import readable_by_others, resolve_tree
from ingestd.rules.globs import path_regex
from ingestd.rules.matching import Rule
from ingestd.rules.parse import MIME, parse_rules, parse_size
from ingestd.rules.patients import PatientMap, parse_patients
from ingestd.targets import KINDS, TargetSettings
from ingestd.yamlsource import START, MarkedDict, MarkedList, Problem, Report, kind_of, load

__all__ = [
    "Config",
    "ConfigError",
    "Paths",
    "Problem",
    "SourceConfig",
    "WatchConfig",
    "load_config",
]

TOP_KEYS = ("paths", "targets", "watch", "patients", "rules", "metrics")
METRICS_KEYS = ("listen",)
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
COMMON_TARGET_KEYS = ("kind", "concurrency", "accept", "max_bytes", "timeout_seconds", "ca_file")
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
CA_FILE_MAX_BYTES = 16 * 1024 * 1024
URL_KEYS = ("base_url", "token_url")
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MIN_TIMEOUT_SECONDS = 8.0  # the EHRs can take several seconds to store a 20 MB document


class ConfigError(Exception):
    """The config cannot be used; `problems` holds every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Paths:
    """Absolute folders (inbox, done, failed) and the journal's SQLite file (state)."""

    inbox: Path
    done: Path
    failed: Path
    state: Path


@dataclass(frozen=True)
class SourceConfig:
    """Per-folder watch tuning: `glob` on the inbox-relative folder path; None = the default."""

    glob: str
    settle_seconds: float | None = None
    poll: bool | None = None

    def applies_to(self, rel_path: PurePosixPath) -> bool:
        """Whether the glob matches `rel_path` or one of the folders above it."""
        regex = path_regex(self.glob)
        candidates = [rel_path, *rel_path.parents]
        return any(regex.fullmatch(p.as_posix()) for p in candidates if p.parts)


@dataclass(frozen=True)
class WatchConfig:
    """How the inbox is watched; `sources` override settle and poll per folder, first match wins."""

    settle_seconds: float = 1.0
    scan_interval_seconds: float = 60.0
    empty_fail_seconds: float = 3600.0
    unknown_type_grace_seconds: float = 30.0
    claim_lease_seconds: float = 600.0
    poll: bool = False
    sources: tuple[SourceConfig, ...] = ()

    def source_for(self, rel_path: PurePosixPath) -> SourceConfig | None:
        return next((s for s in self.sources if s.applies_to(rel_path)), None)

    def settle_for(self, rel_path: PurePosixPath) -> float:
        """The settle time for an inbox-relative file or folder path."""
        source = self.source_for(rel_path)
        if source is None or source.settle_seconds is None:
            return self.settle_seconds
        return source.settle_seconds

    def poll_for(self, rel_path: PurePosixPath) -> bool:
        """Whether to poll (rather than rely on inotify) for an inbox-relative path."""
        source = self.source_for(rel_path)
        if source is None or source.poll is None:
            return self.poll
        return source.poll


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs from the config file, checked and with secrets resolved."""

    file: str
    paths: Paths
    targets: Mapping[str, TargetSettings] = field(repr=False)  # options hold secrets
    watch: WatchConfig = field(default_factory=WatchConfig)
    patients: PatientMap = field(default_factory=PatientMap)
    rules: tuple[Rule, ...] = ()
    metrics_listen: tuple[str, int] | None = None  # loopback host and port; None: no metrics
    warnings: tuple[Problem, ...] = ()

    @property
    def rule_lines(self) -> Mapping[str, int]:
        """Rule name → the line it starts on, for messages and `explain`."""
        return {rule.name: rule.line for rule in self.rules}


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
        report.error(START, f"the config must be a mapping of sections, not {kind_of(tree)}")
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
    targets = _targets(report, targets_node) if targets_node is not None else {}
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
    if paths is None:
        return None
    return Config(
        metrics_listen=listen,
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
            report.error(items.item_mark(index), f"{where} must be a mapping, not {kind_of(item)}")
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


def _targets(report: Report, node: MarkedDict) -> dict[str, TargetSettings]:
    if not node:
        report.error(node.mark, "targets must name at least one target")
    result: dict[str, TargetSettings] = {}
    for name in node:
        if not TARGET_NAME.fullmatch(name):
            report.error(
                node.key_mark(name),
                f"target name {name!r} may hold only letters, digits, '_', '.' and '-'",
            )
        target_node = report.mapping(node, name, f"targets.{name}")
        if target_node is None:
            if name in node and node[name] is None:
                report.error(node.value_mark(name), f"targets.{name} needs at least kind:")
            continue
        settings = _target(report, name, target_node)
        if settings is not None:
            result[name] = settings
    return result


def _target(report: Report, name: str, node: MarkedDict) -> TargetSettings | None:
    where = f"targets.{name}"
    kind_name = report.string(node, "kind", f"{where}.kind")
    if kind_name is None:
        if "kind" not in node:
            report.missing(node, where, "kind")
        report.keys(node, where, [*node])  # no kind: its options cannot be checked
        return None
    kind = KINDS.get(kind_name)
    if kind is None:
        known = ", ".join(sorted(KINDS))
        report.error(node.value_mark("kind"), f"{where}.kind must be one of {known}")
        return None
    option_keys = sorted(kind.required | kind.optional)
    keys = [*COMMON_TARGET_KEYS, CONVERT_TO_PDF, *option_keys]  # issue 14: convert_to_pdf
    report.keys(node, f"{where} (kind {kind_name})", keys)
    for key in sorted(kind.required):
        if key not in node:
            report.missing(node, where, key)
    options: dict[str, str] = {}
    for key in option_keys:
        value = report.string(node, key, f"{where}.{key}")
        if value is None:
            continue
        if key in URL_KEYS and not _url_ok(report, node, key, f"{where}.{key}"):
            continue
        options[key] = value
    for key, message in kind.validate_options(options).items():
        report.error(node.value_mark(key), f"{where}.{key}: {message}")
    concurrency = report.number(node, "concurrency", f"{where}.concurrency", integer=True)
    if concurrency is not None and concurrency < 1:
        report.error(node.value_mark("concurrency"), f"{where}.concurrency must be 1 or more")
    timeout = report.number(node, "timeout_seconds", f"{where}.timeout_seconds")
    if timeout is not None and timeout <= MIN_TIMEOUT_SECONDS:
        report.error(
            node.value_mark("timeout_seconds"),
            f"{where}.timeout_seconds must be more than {MIN_TIMEOUT_SECONDS:g}",
        )
    max_bytes = _max_bytes(report, node, where, kind.default_max_bytes)
    accept = _accept(report, node, where)
    ca_file = _ca_file(report, node, where)
    # issue 14: formats converted to PDF (config.conversion)
    convert = parse_convert_to_pdf(report, node, where, accept or kind.default_accept)
    return TargetSettings(
        name=name,
        kind=kind_name,
        options=MappingProxyType(options),
        concurrency=int(concurrency) if concurrency and concurrency >= 1 else 4,
        accept=accept,
        max_bytes=max_bytes,
        timeout_seconds=float(timeout) if timeout and timeout > MIN_TIMEOUT_SECONDS else 60.0,
        ca_file=ca_file,
        convert_to_pdf=convert,
    )


def _ca_file(report: Report, node: MarkedDict, where: str) -> str | None:
    """A PEM file of CA certificates to trust for this target (relative to the config file)."""
    text = report.string(node, "ca_file", f"{where}.ca_file")
    if text is None:
        return None
    at = node.value_mark("ca_file")
    base = os.path.dirname(os.path.abspath(report.file))
    path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))
    try:
        with open(path, "rb") as handle:
            head = handle.read(CA_FILE_MAX_BYTES)
    except IsADirectoryError:
        report.error(at, f"{where}.ca_file is a folder; name the PEM file of the CA certificate")
        return None
    except OSError as exc:
        report.error(at, f"{where}.ca_file cannot be read ({exc.strerror})")
        return None
    if PEM_CERTIFICATE not in head:
        report.error(
            at,
            f"{where}.ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "convert a DER file with `openssl x509 -inform der -in CA.cer -out CA.pem`",
        )
        return None
    return path


def _url_ok(report: Report, node: MarkedDict, key: str, where: str) -> bool:
    """https://, or http:// to a loopback host; reported without echoing the URL."""
    try:
        parts = urlsplit(node[key])
        host = parts.hostname or ""
    except ValueError:
        report.error(node.value_mark(key), f"{where} is not a valid URL")
        return False
    if parts.scheme not in ("https", "http") or not host:
        report.error(node.value_mark(key), f"{where} must be an https:// URL")
        return False
    if parts.scheme == "http" and not _loopback(host):
        report.error(
            node.value_mark(key),
            f"{where} must use https:// (plain http:// is allowed only to a loopback host)",
        )
        return False
    return True


def _metrics_listen(report: Report, node: MarkedDict) -> tuple[str, int] | None:
    """`listen: 127.0.0.1:9464` (or `[::1]:9464`, `localhost:9464`); loopback only."""
    report.keys(node, "metrics", METRICS_KEYS, METRICS_KEYS)
    if "listen" not in node:
        return None
    value = node["listen"]
    at = node.value_mark("listen")
    host, sep, port = str(value).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        report.error(at, "metrics.listen must be HOST:PORT, e.g. 127.0.0.1:9464")
        return None
    if not _loopback(host):
        report.error(at, "metrics.listen must be a loopback address (127.0.0.1, ::1, localhost)")
        return None
    return host, int(port)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _max_bytes(report: Report, node: MarkedDict, where: str, limit: int) -> int | None:
    if node.get("max_bytes") is None:
        return None
    at = node.value_mark("max_bytes")
    try:
        value = parse_size(node["max_bytes"])
    except ValueError as error:
        report.error(at, f"{where}.max_bytes: {error}")
        return None
    if value < 1 or value > limit:
        report.error(at, f"{where}.max_bytes may only lower the limit: between 1 and {limit}")
        return None
    return value


def _accept(report: Report, node: MarkedDict, where: str) -> frozenset[str] | None:
    items = report.strings(node, "accept", f"{where}.accept")
    if items is None:
        return None
    for mime in items:
        if not MIME.fullmatch(mime) or mime.endswith("/*"):
            report.error(
                node.value_mark("accept"),
                f"{where}.accept: {mime!r} is not a MIME type like application/pdf",
            )
    return frozenset(m.lower() for m in items)
