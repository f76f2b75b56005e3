"""A target's `convert_to_pdf:` list: the detected formats it converts to PDF instead of
refusing. Only what the converter can make is allowed, and only for a target that takes PDF."""

from __future__ import annotations

from ingestd.rules.conversion import CONVERTIBLE, PDF, unconvertible
from ingestd.rules.parse import MIME
from ingestd.yamlsource import MarkedDict, MarkedList, Report

KEY = "convert_to_pdf"


def parse_convert_to_pdf(
    report: Report, node: MarkedDict, where: str, accept: frozenset[str]
) -> frozenset[str]:
    """The formats `targets.NAME.convert_to_pdf` lists (none when absent); every problem
    at the item's file:line:col. `accept`: what the target takes (its list or its kind's)."""
    items = report.strings(node, KEY, f"{where}.{KEY}")
    if items is None:
        return frozenset()
    listed = node[KEY]
    found: set[str] = set()
    for index, mime in enumerate(items):
        at = listed.item_mark(index) if isinstance(listed, MarkedList) else node.value_mark(KEY)
        mime = mime.lower()
        if not MIME.fullmatch(mime) or mime.endswith("/*"):
            report.error(at, f"{where}.{KEY}: {mime!r} is not a MIME type like image/tiff")
        elif mime not in CONVERTIBLE:
            report.error(at, f"{where}.{KEY}: {unconvertible(mime)}")
        else:
            found.add(mime)
    if found and PDF not in accept:
        report.error(
            node.value_mark(KEY),
            f"{where}.{KEY}: the target does not accept {PDF}; add it to accept: or drop {KEY}",
        )
    return frozenset(found)
