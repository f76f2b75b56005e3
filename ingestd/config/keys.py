"""A FHIR target's `private_key` (SMART Backend Services): the PEM text from a secret reference,
or a path to the PEM file (relative to the config file), checked offline by `ingestd check` so a
missing, unreadable or unusable key is a `file:line:col` problem rather than a paused target.
"""

from __future__ import annotations

import os

from ingestd.targets.smart import KeyProblem, is_pem, load_signing_key
from ingestd.yamlsource import MarkedDict, Report


def check_private_key(
    report: Report, node: MarkedDict, where: str, options: dict[str, str]
) -> None:
    """Make `options["private_key"]` an absolute path (or keep the PEM text); report a key
    that cannot be used (the option stays, so its auth form is not reported as well)."""
    value = options.get("private_key")
    if value is None:
        return
    if not is_pem(value):
        base = os.path.dirname(os.path.abspath(report.file))
        value = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
    try:
        load_signing_key(value)
    except KeyProblem as problem:
        report.error(node.value_mark("private_key"), f"{where}.{problem}")
        return
    options["private_key"] = value
