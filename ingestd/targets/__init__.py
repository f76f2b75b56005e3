"""The registry of target kinds, keyed by the config's `kind`, and building targets from settings.

Owns `TargetSettings` (one `targets.NAME` entry, secrets already resolved), `TargetKind` (what the
config module needs to validate a kind's options and patient ids, read from the kind's target
class) and `make_target`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ingestd.targets import leyr, nymbl
from ingestd.targets.base import Target
from ingestd.targets.http import HttpTarget

COMMON_OPTIONS = frozenset(
    {"kind", "concurrency", "accept", "max_bytes", "timeout_seconds", "ca_file", "convert_to_pdf"}
)


@dataclass(frozen=True)
class TargetSettings:
    """One configured target: `options` are the kind's own keys (not the common ones)."""

    name: str
    kind: str
    options: Mapping[str, str] = field(repr=False)  # holds resolved secrets
    concurrency: int = 4
    accept: frozenset[str] | None = None  # None: the kind's default list
    max_bytes: int | None = None  # None: the kind's default limit
    timeout_seconds: float = 60.0
    ca_file: str | None = None  # a PEM file of CA certificates; None: the system's (or env's)
    convert_to_pdf: frozenset[str] = frozenset()  # detected formats sent as PDF (issue 14)


def _no_option_problems(options: Mapping[str, str]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class TargetKind:
    """What the config module needs to know about one kind of EHR."""

    kind: str
    required: frozenset[str]  # option keys besides COMMON_OPTIONS
    optional: frozenset[str]
    default_max_bytes: int
    default_accept: frozenset[str]
    validate_patient_id: Callable[[str], str | None]  # an error message, or None when valid
    make_target: Callable[[TargetSettings], Target]
    # Problems with option values, by option key; messages never quote the value.
    validate_options: Callable[[Mapping[str, str]], dict[str, str]] = field(
        default=_no_option_problems
    )

    @classmethod
    def of(cls, target: type[HttpTarget]) -> TargetKind:
        """The entry for a target class, which declares everything about its kind."""
        return cls(
            kind=target.kind,
            required=target.required,
            optional=target.optional,
            default_max_bytes=target.default_max_bytes,
            default_accept=target.default_accept,
            validate_patient_id=target.validate_patient_id,
            make_target=target.from_settings,
            validate_options=target.validate_options,
        )


KINDS: dict[str, TargetKind] = {
    kind.kind: kind for kind in map(TargetKind.of, (leyr.LeyrTarget, nymbl.NymblTarget))
}


def make_target(cfg: TargetSettings) -> Target:
    """Build the target `cfg` describes; ValueError when its kind or options do not fit."""
    kind = KINDS.get(cfg.kind)
    if kind is None:
        raise ValueError(f"unknown target kind; expected one of: {', '.join(sorted(KINDS))}")
    missing = sorted(kind.required - set(cfg.options))
    if missing:
        raise ValueError(f"target {cfg.name!r} needs option(s): {', '.join(missing)}")
    unknown = sorted(set(cfg.options) - kind.required - kind.optional)
    if unknown:
        raise ValueError(f"target {cfg.name!r} has unknown option(s): {', '.join(unknown)}")
    problems = kind.validate_options(cfg.options)
    if problems:
        raise ValueError(f"target {cfg.name!r}: " + "; ".join(problems.values()))
    return kind.make_target(cfg)


__all__ = ["COMMON_OPTIONS", "KINDS", "TargetKind", "TargetSettings", "make_target"]
