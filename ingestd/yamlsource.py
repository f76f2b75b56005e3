"""The YAML source of the config: loading with positions, and reporting problems at them.

Owns `Problem` (one `FILE:LINE:COL: message`), a PyYAML SafeLoader that keeps node marks and
rejects duplicate keys, the `MarkedDict` / `MarkedList` it produces, and the small typed getters the
config sections use to check shapes while collecting every problem instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class Mark(NamedTuple):
    """A 1-based (line, col) position in the config file."""

    line: int
    col: int


START = Mark(1, 1)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config, at the line and column of the offending node."""

    file: str
    line: int
    col: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


class MarkedDict(dict[str, Any]):
    """A mapping from the config with the position of the node, of each key and of each value.

    Keys are always the key's text as written (`191212121212:` stays a string, `no:` stays "no").
    `raw` holds the source text of scalar values, so a string option written without quotes keeps
    its exact text (`0123` is "0123", not the number 83).
    """

    def __init__(self, mark: Mark = START) -> None:
        super().__init__()
        self.mark = mark
        self.owner: Mark | None = None  # the key holding this mapping, where "missing" points
        self.key_marks: dict[str, Mark] = {}
        self.value_marks: dict[str, Mark] = {}
        self.raw: dict[str, str] = {}

    def key_mark(self, key: str) -> Mark:
        return self.key_marks.get(key, self.mark)

    def value_mark(self, key: str) -> Mark:
        return self.value_marks.get(key, self.mark)


class MarkedList(list[Any]):
    """A sequence from the config with the position of the node and of each item."""

    def __init__(self, mark: Mark = START) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []
        self.raw: dict[int, str] = {}

    def item_mark(self, index: int) -> Mark:
        return self.item_marks[index] if 0 <= index < len(self.item_marks) else self.mark


NodeT = TypeVar("NodeT", MarkedDict, MarkedList)


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class MarkedLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember where they came from."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.problems: list[Problem] = []

    def construct_marked_mapping(self, node: MappingNode) -> MarkedDict:
        result = MarkedDict(_mark(node))
        seen: dict[str, Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                continue
            key, at = str(key_node.value), _mark(key_node)
            if key in seen:
                first = seen[key]
                # The key is not echoed: under patients.folders it may be a personal number.
                message = f"duplicate key (the same key is on line {first.line})"
                self.problems.append(Problem(self.file, *at, message))
            else:
                seen[key] = at
        # Merged (`<<: *anchor`) pairs come first, so the mapping's own keys override them.
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problems.append(
                    Problem(self.file, *_mark(key_node), "a key must be a plain name")
                )
                continue
            key = str(key_node.value)
            if key in seen and seen[key] != _mark(key_node):
                continue  # a duplicate (reported above) or a merged key this mapping overrides
            result[key] = value = self.construct_object(value_node, deep=True)
            if isinstance(value, MarkedDict) and value.owner is None:
                value.owner = _mark(key_node)
            result.key_marks[key] = _mark(key_node)
            result.value_marks[key] = _mark(value_node)
            result.raw.pop(key, None)
            if isinstance(value_node, ScalarNode):
                result.raw[key] = str(value_node.value)
        return result

    def construct_marked_sequence(self, node: SequenceNode) -> MarkedList:
        result = MarkedList(_mark(node))
        for index, item in enumerate(node.value):
            result.append(self.construct_object(item, deep=True))
            result.item_marks.append(_mark(item))
            if isinstance(item, ScalarNode):
                result.raw[index] = str(item.value)
        return result


MarkedLoader.add_constructor("tag:yaml.org,2002:map", MarkedLoader.construct_marked_mapping)
MarkedLoader.add_constructor("tag:yaml.org,2002:seq", MarkedLoader.construct_marked_sequence)


def _syntax_problem(file: str, error: yaml.YAMLError) -> Problem:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        at = Mark(mark.line + 1, mark.column + 1) if mark else START
        text = error.problem or error.context or "invalid YAML"
        if error.problem and error.context:
            where = error.context_mark
            if where is not None and where is not mark:
                start = f"line {where.line + 1}, col {where.column + 1}"
                text += f" ({error.context} that starts at {start})"
            else:
                text += f" ({error.context})"
        return Problem(file, *at, f"YAML syntax error: {text}")
    return Problem(file, *START, "YAML syntax error")


def _decode_problem(file: str, data: bytes, error: UnicodeDecodeError) -> Problem:
    before = data[: error.start]
    line = before.count(b"\n") + 1
    col = len(before) - (before.rfind(b"\n") + 1) + 1
    return Problem(file, line, col, "the file is not UTF-8 text")


def load(data: str | bytes, file: str) -> tuple[object, list[Problem]]:
    """Parse one YAML document; return its data and the problems found (syntax, duplicates).

    On a syntax error the data is None and the one problem says where.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return None, [_decode_problem(file, data, error)]
    else:
        text = data
    loader = MarkedLoader(text, file)
    try:
        result = loader.get_single_data()
    except yaml.YAMLError as error:
        return None, [_syntax_problem(file, error)]
    finally:
        loader.dispose()
    return result, loader.problems


# In order: a bool is an int too.
_KIND_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (dict, "a mapping"),
    (list, "a list"),
)


def yaml_type(value: object) -> str:
    """The config-level name of a value's type, for messages that must not echo the value."""
    if value is None:
        return "empty"
    for kind, name in _KIND_NAMES:
        if isinstance(value, kind):
            return name
    return "a " + type(value).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` when one of `choices` is close to `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass
class Report:
    """Collects the problems of one config file; checks go on after each one."""

    file: str
    problems: list[Problem] = field(default_factory=list)
    # Values already reported as unusable (an unresolved secret): getters skip them quietly.
    unusable: set[Mark] = field(default_factory=set)

    def error(self, at: Mark, message: str) -> None:
        self.problems.append(Problem(self.file, at.line, at.col, message))

    def warn(self, at: Mark, message: str) -> None:
        self.problems.append(Problem(self.file, at.line, at.col, message, warning=True))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    def keys(
        self,
        mapping: MarkedDict,
        where: str,
        allowed: Collection[str],
        required: Iterable[str] = (),
    ) -> None:
        """Report unknown keys (with a close match) and missing required ones (at `mapping`)."""
        for key in mapping:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                self.error(mapping.key_mark(key), f"unknown key {key!r} in {where}{hint}")
        for key in required:
            if key not in mapping:
                self.missing(mapping, where, key)

    def missing(self, mapping: MarkedDict, where: str, key: str) -> None:
        """Report a missing key at the key that holds `mapping` (or at its start)."""
        at = mapping.owner or mapping.mark
        self.error(at, f"{where} is missing the required key {key!r}")

    def mapping(self, parent: MarkedDict, key: str, where: str) -> MarkedDict | None:
        """`parent[key]` when it is a mapping (None when absent or wrong, the latter reported)."""
        return self._node(parent, key, where, MarkedDict, "a mapping")

    def sequence(self, parent: MarkedDict, key: str, where: str) -> MarkedList | None:
        """`parent[key]` when it is a list (None when absent or wrong, the latter reported)."""
        return self._node(parent, key, where, MarkedList, "a list")

    def mappings(
        self, parent: MarkedDict, key: str, where: str
    ) -> Iterator[tuple[str, MarkedDict]]:
        """The mappings in the list `parent[key]`, each with its `where[N]`; other items are
        reported as they are reached."""
        items = self.sequence(parent, key, where)
        if items is None:
            return
        for index, item in enumerate(items):
            at = f"{where}[{index + 1}]"
            if isinstance(item, MarkedDict):
                yield at, item
            else:
                self.error(items.item_mark(index), f"{at} must be a mapping, not {yaml_type(item)}")

    def _node(
        self, parent: MarkedDict, key: str, where: str, kind: type[NodeT], noun: str
    ) -> NodeT | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, kind):
            self.error(parent.value_mark(key), f"{where} must be {noun}, not {yaml_type(value)}")
            return None
        return value

    def string(self, parent: MarkedDict, key: str, where: str) -> str | None:
        """A text value; unquoted numbers and words keep exactly the text written."""
        value = parent.get(key)
        if parent.value_mark(key) in self.unusable:
            return None
        if value is None:
            if key in parent:
                self.error(parent.value_mark(key), f"{where} must not be empty")
            return None
        if isinstance(value, str):
            if not value:
                self.error(parent.value_mark(key), f"{where} must not be empty")
                return None
            return value
        if isinstance(value, (bool, int, float)) and key in parent.raw:
            return parent.raw[key]
        self.error(parent.value_mark(key), f"{where} must be a string, not {yaml_type(value)}")
        return None

    def number(
        self, parent: MarkedDict, key: str, where: str, *, integer: bool = False
    ) -> float | None:
        value = parent.get(key)
        if value is None:
            if key in parent:
                self.error(parent.value_mark(key), f"{where} must not be empty")
            return None
        wanted = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            noun = "a whole number" if integer else "a number"
            self.error(parent.value_mark(key), f"{where} must be {noun}, not {yaml_type(value)}")
            return None
        if not math.isfinite(value):
            self.error(parent.value_mark(key), f"{where} must be a finite number")
            return None
        return value

    def boolean(self, parent: MarkedDict, key: str, where: str) -> bool | None:
        value = parent.get(key)
        if value is None:
            if key in parent:
                self.error(parent.value_mark(key), f"{where} must be true or false")
            return None
        if not isinstance(value, bool):
            self.error(
                parent.value_mark(key), f"{where} must be true or false, not {yaml_type(value)}"
            )
            return None
        return value

    def strings(self, parent: MarkedDict, key: str, where: str) -> list[str] | None:
        """A list of strings; a single string counts as a list of one."""
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if not isinstance(value, MarkedList):
            self.error(parent.value_mark(key), f"{where} must be a list, not {yaml_type(value)}")
            return None
        items: list[str] = []
        for index, item in enumerate(value):
            if value.item_mark(index) in self.unusable:
                continue
            if isinstance(item, str) and item:
                items.append(item)
            else:
                self.error(
                    value.item_mark(index),
                    f"{where}[{index + 1}] must be a non-empty string, not {yaml_type(item)}",
                )
        return items
