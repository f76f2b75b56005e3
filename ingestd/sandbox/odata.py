"""The OData query options Nymbl's document list honours: $top, $skip, $count and $filter.

$filter supports `field eq literal` joined by `and`, on document_type, file_name, content_type
(string literals in single quotes, '' for a quote, or null) and file_size_bytes (integers).
Anything else is refused, as a strict server would; $select and $orderby are accepted and ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

STRING_FIELDS = frozenset({"document_type", "file_name", "content_type"})
INTEGER_FIELDS = frozenset({"file_size_bytes"})
_IGNORED = frozenset({"$select", "$orderby"})
_KNOWN = frozenset({"$top", "$skip", "$count", "$filter"}) | _IGNORED
_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^']|'')*')"
    r"|(?P<integer>-?[0-9]+)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<other>\S))"
)
_NON_NEGATIVE = re.compile(r"[0-9]{1,9}")

Literal = str | int | None


class ODataError(ValueError):
    """An unsupported or malformed query option; the message is safe to send back."""


@dataclass(frozen=True)
class Query:
    top: int | None = None
    skip: int = 0
    count: bool = False
    filters: tuple[tuple[str, Literal], ...] = ()

    def apply(self, items: list[dict[str, object]]) -> tuple[list[dict[str, object]], int]:
        """The page to return and the count of matches before $top/$skip."""
        matched = [i for i in items if all(i.get(name) == value for name, value in self.filters)]
        end = None if self.top is None else self.skip + self.top
        return matched[self.skip : end], len(matched)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None or match.lastgroup == "other":
            raise ODataError("unsupported $filter")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return tokens


def parse_filter(text: str) -> tuple[tuple[str, Literal], ...]:
    tokens = _tokens(text)
    filters: list[tuple[str, Literal]] = []
    index = 0
    while True:
        if index + 3 > len(tokens):
            raise ODataError("unsupported $filter: expected `field eq value`")
        (field_kind, name), (_, operator), (kind, raw) = tokens[index : index + 3]
        if field_kind != "word" or operator != "eq":
            raise ODataError("unsupported $filter: only `field eq value` joined by `and`")
        value: Literal
        if name in STRING_FIELDS and kind == "string":
            value = raw[1:-1].replace("''", "'")
        elif name in STRING_FIELDS and (kind, raw) == ("word", "null"):
            value = None
        elif name in INTEGER_FIELDS and kind == "integer":
            value = int(raw)
        else:
            raise ODataError(f"unsupported $filter on {name}")
        filters.append((name, value))
        index += 3
        if index == len(tokens):
            return tuple(filters)
        if tokens[index] != ("word", "and"):
            raise ODataError("unsupported $filter: only `and` may join comparisons")
        index += 1


def _non_negative(name: str, value: str) -> int:
    if not _NON_NEGATIVE.fullmatch(value):
        raise ODataError(f"{name} must be a non-negative integer")
    return int(value)


def parse_query(query: str) -> Query:
    """Parse a percent-encoded query string; unknown system options ($...) are errors."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ODataError("malformed query string") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if not name.startswith("$"):
            continue
        if name not in _KNOWN:
            raise ODataError(f"unsupported query option {name}")
        if name in options:
            raise ODataError(f"{name} is given twice")
        options[name] = value
    count = options.get("$count", "false")
    if count not in ("true", "false"):
        raise ODataError("$count must be true or false")
    top = options.get("$top")
    return Query(
        top=None if top is None else _non_negative("$top", top),
        skip=_non_negative("$skip", options.get("$skip", "0")),
        count=count == "true",
        filters=parse_filter(options["$filter"]) if "$filter" in options else (),
    )
