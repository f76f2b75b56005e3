"""The marked YAML loader: positions, duplicate keys, syntax errors, and the typed getters."""

from __future__ import annotations

from ingestd.yamlsource import Mark, MarkedDict, MarkedList, Problem, Report, load


def test_marks_of_keys_values_and_items() -> None:
    data, problems = load("a: 1\nb:\n  - x\n  - {c: 2}\n", "f.yaml")
    assert problems == []
    assert isinstance(data, MarkedDict)
    assert data.mark == Mark(1, 1)
    assert data.key_mark("a") == (1, 1)
    assert data.value_mark("a") == (1, 4)
    items = data["b"]
    assert isinstance(items, MarkedList)
    assert items.mark == (3, 3)
    assert items.item_mark(0) == (3, 5)
    assert items.item_mark(1) == (4, 5)
    inner = items[1]
    assert isinstance(inner, MarkedDict)
    assert inner.key_mark("c") == (4, 6)
    assert inner == {"c": 2}


def test_plain_data_compares_equal() -> None:
    data, _ = load("x: [1, {y: z}]", "f.yaml")
    assert data == {"x": [1, {"y": "z"}]}


def test_duplicate_key_is_a_problem_at_the_second_key() -> None:
    data, problems = load("paths:\n  inbox: /a\n  inbox: /b\n", "cfg.yaml")
    assert [str(p) for p in problems] == ["cfg.yaml:3:3: duplicate key (the same key is on line 2)"]
    assert isinstance(data, MarkedDict)
    assert data["paths"]["inbox"] == "/a"


def test_duplicates_are_all_reported_and_quoting_does_not_hide_them() -> None:
    _, problems = load('a: 1\n"a": 2\nb: {c: 1, c: 2}\n', "f.yaml")
    assert [(p.line, p.col) for p in problems] == [(2, 1), (3, 11)]


def test_merge_keys_are_overridden_without_a_duplicate_problem() -> None:
    data, problems = load("base: &b {k: 1, j: 2}\nm:\n  <<: *b\n  k: 5\n", "f.yaml")
    assert problems == []
    assert isinstance(data, MarkedDict)
    assert data["m"] == {"k": 5, "j": 2}
    assert data["m"].key_mark("k") == (4, 3)


def test_keys_are_the_text_as_written() -> None:
    data, _ = load("191212121212: x\nno: y\n0123: z\n", "f.yaml")
    assert isinstance(data, MarkedDict)
    assert list(data) == ["191212121212", "no", "0123"]


def test_raw_text_of_scalars_is_kept() -> None:
    data, _ = load("n: 0123\nm: [007]\n", "f.yaml")
    assert isinstance(data, MarkedDict)
    assert data["n"] == 83  # YAML 1.1 octal: why the raw text matters
    assert data.raw["n"] == "0123"
    assert data["m"].raw[0] == "007"


def test_syntax_error_has_line_and_col() -> None:
    data, problems = load("a: 1\n  b: 2\n", "f.yaml")
    assert data is None
    assert len(problems) == 1
    assert str(problems[0]).startswith("f.yaml:2:4: YAML syntax error: mapping values")


def test_syntax_error_names_where_the_construct_started() -> None:
    _, problems = load("a: [1, 2\nb: 3\n", "f.yaml")
    assert (problems[0].line, problems[0].col) == (2, 2)
    assert "starts at line 1, col 4" in problems[0].message


def test_tab_indentation_is_a_syntax_error() -> None:
    _, problems = load("a:\n\tb: 1\n", "f.yaml")
    assert problems[0].line == 2


def test_not_utf8() -> None:
    data, problems = load(b"a: 1\nb: \xff\n", "f.yaml")
    assert data is None
    assert str(problems[0]) == "f.yaml:2:4: the file is not UTF-8 text"


def test_several_documents_are_refused() -> None:
    data, problems = load("a: 1\n---\nb: 2\n", "f.yaml")
    assert data is None
    assert problems[0].line == 2


def test_empty_document() -> None:
    assert load("", "f.yaml") == (None, [])
    assert load("# only a comment\n", "f.yaml") == (None, [])


def test_recursive_alias_is_a_problem_not_a_crash() -> None:
    data, problems = load("&a [*a]", "f.yaml")
    assert data is None
    assert problems
    assert problems[0].line == 1


def test_problem_str_and_warning_prefix() -> None:
    assert str(Problem("c.yaml", 3, 7, "bad")) == "c.yaml:3:7: bad"
    assert str(Problem("c.yaml", 3, 7, "meh", warning=True)) == "c.yaml:3:7: warning: meh"


def _tree(text: str) -> MarkedDict:
    data, problems = load(text, "f.yaml")
    assert problems == []
    assert isinstance(data, MarkedDict)
    return data


def test_report_keys_unknown_with_did_you_mean_and_missing() -> None:
    report = Report("f.yaml")
    node = _tree("x:\n  inbx: /a\n  zzz: 1\n")["x"]
    report.keys(node, "paths", ("inbox", "done"), ("inbox",))
    assert [str(p) for p in report.problems] == [
        "f.yaml:2:3: unknown key 'inbx' in paths; did you mean 'inbox'?",
        "f.yaml:3:3: unknown key 'zzz' in paths",
        "f.yaml:1:1: paths is missing the required key 'inbox'",
    ]


def test_report_getters_check_types_without_echoing_values() -> None:
    report = Report("f.yaml")
    node = _tree("s: [1]\nn: hunter2\nb: maybe\nl: {a: 1}\nid: 0123\nt: 12.50\n")
    assert report.string(node, "s", "s") is None
    assert report.number(node, "n", "n") is None
    assert report.boolean(node, "b", "b") is None
    assert report.strings(node, "l", "l") is None
    assert report.string(node, "id", "id") == "0123"
    assert report.string(node, "t", "t") == "12.50"
    messages = [str(p) for p in report.problems]
    assert messages == [
        "f.yaml:1:4: s must be a string, not a list",
        "f.yaml:2:4: n must be a number, not a string",
        "f.yaml:3:4: b must be true or false, not a string",
        "f.yaml:4:4: l must be a list, not a mapping",
    ]
    assert not any("hunter2" in m or "maybe" in m for m in messages)


def test_report_whole_numbers_and_empty_values() -> None:
    report = Report("f.yaml")
    node = _tree("i: 1.5\nj: true\ne:\ns: ''\nf: .inf\n")
    assert report.number(node, "f", "f") is None
    assert report.number(node, "i", "i", integer=True) is None
    assert report.number(node, "j", "j") is None
    assert report.string(node, "e", "e") is None
    assert report.string(node, "s", "s") is None
    assert [p.message for p in report.problems] == [
        "f must be a finite number",
        "i must be a whole number, not a number",
        "j must be a number, not a boolean",
        "e must not be empty",
        "s must not be empty",
    ]
