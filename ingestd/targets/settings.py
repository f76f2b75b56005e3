"""What the config says about one target: the settings every kind shares (`CommonSettings`, the
one description of them: the config's keys, the validator and the targets all read it) and the
kind's own options (`TargetSettings.options`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommonSettings:
    """Settings every kind takes besides its own options."""

    concurrency: int = 4  # uploads at once
    accept: frozenset[str] | None = None  # None: the kind's default list
    max_bytes: int | None = None  # None: the kind's default limit
    timeout_seconds: float = 60.0
    ca_file: str | None = None  # a PEM file of CA certificates; None: the system's (or env's)
    convert_to_pdf: frozenset[str] = frozenset()  # detected formats sent as PDF (config/conversion)


# The config keys every target takes, in the order messages list them.
COMMON_KEYS: tuple[str, ...] = ("kind", *(f.name for f in dataclasses.fields(CommonSettings)))
COMMON_OPTIONS = frozenset(COMMON_KEYS)


@dataclass(frozen=True)
class TargetSettings:
    """One configured target: `options` are the kind's own keys (not the common ones)."""

    name: str
    kind: str
    options: Mapping[str, str] = field(repr=False)  # holds resolved secrets
    common: CommonSettings = CommonSettings()
