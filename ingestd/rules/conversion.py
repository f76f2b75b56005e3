"""Conversion to PDF as the config decides it: which detected formats can be converted, and
whether one file is converted (its rule's `convert: pdf`, else its target's `convert_to_pdf`).

The decision is made when a file is claimed and kept in the journal with the rule's decision,
so a reload never changes how a claimed file is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from ingestd.rules.matching import Decision
from ingestd.yamlsource import MarkedDict, Report

PDF = "application/pdf"
# What the converter (img2pdf) embeds losslessly; anything else cannot become a PDF here.
CONVERTIBLE = frozenset({"image/tiff", "image/jpeg", "image/png"})
CONVERT_VALUES = ("pdf",)


def with_target_default(decision: Decision, fmt: str, target_converts: Collection[str]) -> Decision:
    """`decision` converting to PDF when its target lists the detected format, unless its
    rule already says so; the reason is kept for `explain` and the logs."""
    if decision.action != "upload" or decision.convert or fmt not in target_converts:
        return decision
    return dataclasses.replace(
        decision,
        convert="pdf",
        convert_why=f"target '{decision.target}' lists {fmt} in convert_to_pdf",
    )


def converts(decision: Decision, fmt: str) -> bool:
    """Whether a file of format `fmt` is converted before it is sent: a PDF never is."""
    return decision.action == "upload" and decision.convert == "pdf" and fmt != PDF


def pdf_name(name: str) -> str:
    """The document name a converted file is sent under: `fax.tif` → `fax.pdf`."""
    stem, dot, _ = name.rpartition(".")
    return f"{stem if dot and stem else name}.pdf"


def rule_convert(
    report: Report, node: MarkedDict, where: str, formats: Collection[str] | None
) -> str:
    """A rule's `set.convert`: "pdf" or "" (not set). A rule whose `match.format` names a
    format that cannot be converted is an error: that conversion could never be made."""
    value = report.string(node, "convert", f"{where}.convert")
    if value is None:
        return ""
    at = node.value_mark("convert")
    if value not in CONVERT_VALUES:
        report.error(at, f"{where}.convert: the only conversion is `pdf`")
        return ""
    if formats is None:
        report.warn(
            at,
            f"{where}.convert: the rule matches every format, but only TIFF, JPEG and PNG are "
            "converted (a PDF is sent as it is; anything else fails as conversion_failed); "
            "add match: format: [image/tiff, image/jpeg, image/png]",
        )
    for mime in sorted(set(formats or ()) - CONVERTIBLE - {PDF}):
        report.error(at, f"{where}.convert: {unconvertible(mime)}")
    return value


def unconvertible(mime: str) -> str:
    """Why `mime` cannot be converted (for config errors and receipts)."""
    known = ", ".join(sorted(CONVERTIBLE))
    return f"{mime} cannot be converted to PDF (only {known} can be)"
