"""The registry of target kinds, keyed by the config's `kind`: each kind's target class is the
one description of it (its options, limits, accepted types, patient-id rule), and `make_target`
builds a target from its settings.
"""

from __future__ import annotations

from ingestd.targets.base import Target
from ingestd.targets.fhir import FhirTarget
from ingestd.targets.http import HttpTarget
from ingestd.targets.leyr import LeyrTarget
from ingestd.targets.nymbl import NymblTarget
from ingestd.targets.settings import COMMON_KEYS, COMMON_OPTIONS, CommonSettings, TargetSettings

KINDS: dict[str, type[HttpTarget]] = {
    kind.kind: kind for kind in (LeyrTarget, NymblTarget, FhirTarget)
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
    return kind.from_settings(cfg)


__all__ = [
    "COMMON_KEYS",
    "COMMON_OPTIONS",
    "KINDS",
    "CommonSettings",
    "TargetSettings",
    "make_target",
]
