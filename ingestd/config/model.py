"""What a loaded config is: frozen settings (`Config`, `Paths`, `WatchConfig`, `SourceConfig`)
and the one error (`ConfigError`, every problem as `FILE:LINE:COL: message`) that loading raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ingestd.config.statuspage import StatusPageConfig
from ingestd.journal import SharedJournal
from ingestd.rules.globs import path_regex
from ingestd.rules.matching import Rule
from ingestd.rules.patients import PatientMap
from ingestd.targets import TargetSettings
from ingestd.yamlsource import Problem


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
class VerifySchedule:
    """`verify:`: the daemon re-checks a random `sample` (a fraction) of done/ receipts against
    the EHR every `every_seconds`, as `ingestd verify --again` would."""

    every_seconds: float
    sample: float  # 0 < sample <= 1


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
    verify: VerifySchedule | None = None  # None: no periodic verification
    status_page: StatusPageConfig | None = None  # None: no status page
    journal: SharedJournal | None = None  # None: the SQLite journal at paths.state
    warnings: tuple[Problem, ...] = ()

    @property
    def rule_lines(self) -> Mapping[str, int]:
        """Rule name → the line it starts on, for messages and `explain`."""
        return {rule.name: rule.line for rule in self.rules}
