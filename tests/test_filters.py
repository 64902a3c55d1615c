"""Unit tests for switchd.filters: seed expressions, match-all forms, and hostile input."""

from __future__ import annotations

import ast
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchd import filter_templates, filters
from switchd.filters import CompiledFilter, FilterError, compile_filter
from tests.conftest import evaluate_in_child

SEED = (
    'data["body"]["x"] == 1 and data["headers"]["y"] == "z" '
    'or data["special_key"] == "special value"'
)


def sample() -> dict[str, Any]:
    return {
        "body": {"x": 1, "s": "abc", "n": [1, 2, 3], "nested": {"k": "v"}},
        "headers": {"y": "z"},
        "query_params": {"page": 2},
        "special_key": "special value",
    }


# --- the seed example ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"body": {"x": 1}, "headers": {"y": "z"}}, True),
        ({"body": {"x": 1}, "headers": {"y": "z"}, "special_key": "other"}, True),
        ({"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "special value"}, True),
        ({"body": {"x": 1}, "headers": {"y": "q"}, "special_key": "special value"}, True),
        ({"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "other"}, False),
        ({"body": {"x": 1}, "headers": {"y": "q"}, "special_key": "other"}, False),
        ({"body": {"x": "1"}, "headers": {"y": "z"}, "special_key": "Special Value"}, False),
    ],
)
def test_seed_example(payload: dict[str, Any], expected: bool) -> None:
    compiled = compile_filter(SEED)
    assert compiled.matches(payload) is expected
    assert compiled.errors == 0
    assert compiled.explain(payload) == (expected, None)


@pytest.mark.parametrize(
    "payload",
    [
        {"body": {"x": 2}, "headers": {"y": "z"}},  # special_key missing
        {"body": {"x": 1}},  # headers missing
        {},
        {"body": "text", "headers": {"y": "z"}},  # wrong type
        {"body": None},
        {"body": [1, 2], "headers": {"y": "z"}},
        # Python semantics: the left operand of `or` raises before the right one is tried.
        {"special_key": "special value"},
    ],
)
def test_seed_example_missing_key_is_no_match_and_counted(payload: dict[str, Any]) -> None:
    compiled = compile_filter(SEED)
    assert compiled.errors == 0
    assert compiled.matches(payload) is False
    assert compiled.errors == 1
    assert compiled.matches(payload) is False
    assert compiled.errors == 2
    matched, error = compiled.explain(payload)
    assert matched is False
    assert isinstance(error, str) and error
    assert compiled.errors == 2  # explain is for tools: it does not count


def test_errors_counter_only_counts_failures() -> None:
    compiled = compile_filter(SEED)
    payloads = [
        {"body": {"x": 1}, "headers": {"y": "z"}},
        {},
        {"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "special value"},
        {"body": {}},
        {"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "x"},
    ]
    results = [compiled.matches(p) for p in payloads]
    assert results == [True, False, True, False, False]
    assert compiled.errors == 2


def test_missing_key_explain_names_the_error() -> None:
    matched, error = compile_filter('data["nope"] == 1').explain({})
    assert matched is False
    assert error is not None and error.startswith("KeyError")


# --- match everything -----------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["True", "", None, "  true ", "TRUE", "\ttrue\n", "   "])
def test_match_all_forms(expression: str | None) -> None:
    compiled = compile_filter(expression)
    assert isinstance(compiled, CompiledFilter)
    assert compiled.template is None
    for payload in ({}, sample(), {"anything": [1, 2]}):
        assert compiled.matches(payload) is True
        assert compiled.explain(payload) == (True, None)
    assert compiled.errors == 0


def test_match_all_source_is_normalised() -> None:
    assert compile_filter(None).source == "True"
    assert compile_filter("").source == "True"


@pytest.mark.parametrize("expression", ["False", "None", "0", '""', "[]"])
def test_falsy_constants_match_nothing(expression: str) -> None:
    compiled = compile_filter(expression)
    assert compiled.matches(sample()) is False
    assert compiled.errors == 0


# --- ordinary expressions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('data["body"]["s"].startswith("a")', True),
        ('data["body"]["s"].startswith("b")', False),
        ('data["body"]["s"].endswith("bc")', True),
        ('data["body"]["s"].upper() == "ABC"', True),
        ('data["body"]["s"].split("b") == ["a", "c"]', True),
        ('"b" in data["body"]["s"]', True),
        ('data.get("missing") is None', True),
        ('data.get("missing", "d") == "d"', True),
        ('data.get("body").get("x") == 1', True),
        ('data["body"].get("nested", {}).get("k") == "v"', True),
        ('"special_key" in data', True),
        ('"x" in data["body"].keys()', True),
        ('"v" in data["body"]["nested"].values()', True),
        ('len(data["body"]["n"]) == 3', True),
        ('data["body"]["n"][0] == 1 and data["body"]["n"][-1] == 3', True),
        ('data["body"]["n"].count(2) == 1', True),
        ('data["query_params"]["page"] > 1', True),
        ('data["query_params"]["page"] in [1, 3]', False),
        ('not data["body"]["x"] == 1', False),
        ('data["body"]["x"] + 1 == 2', True),
        ('int("42") == 42 and str(7) == "7"', True),
        ('max(data["body"]["n"]) == 3 and min(data["body"]["n"]) == 1', True),
        ('any([data["body"]["x"] == 1, False])', True),
        ('all([data["body"]["x"] == 1, False])', False),
        ('"yes" if data["body"]["x"] == 1 else ""', True),
        ('data["body"]["s"][0:2] == "ab"', True),
        ("2 ** 10 == 1024", True),
    ],
)
def test_ordinary_expressions(expression: str, expected: bool) -> None:
    compiled = compile_filter(expression)
    payload = sample()
    assert compiled.matches(payload) is expected
    assert compiled.errors == 0
    assert payload == sample()


def test_compiled_filter_is_reusable_across_payloads() -> None:
    compiled = compile_filter('data["body"]["x"] == 1')
    outcomes = [compiled.matches({"body": {"x": i}}) for i in range(5)]
    assert outcomes == [False, True, False, False, False]


def test_data_name_is_not_left_behind_between_evaluations() -> None:
    compiled = compile_filter('data["k"] == 1')
    assert compiled.matches({"k": 1}) is True
    assert filters._SHARED.names == {}


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


@pytest.mark.parametrize(
    "expression",
    ['data["x" ==', "data[", "1 +", "and", "data['a'] = 1", "import os", "x = 1"],
)
def test_syntax_errors_are_filter_errors(expression: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expression)
    assert str(info.value)


# --- hostile expressions ---------------------------------------------------------------------

REJECTED_AT_COMPILE = [
    '__import__("os")',
    "data.__class__",
    "().__class__.__bases__",
    '"".__class__.__mro__[1].__subclasses__()',
    "data.__dict__",
    "[x for x in data]",
    "{x: 1 for x in data}",
    "(x for x in data)",
    "lambda: 1",
    "os",
    'open("x")',
    'eval("1")',
    'exec("1")',
    'getattr(data, "clear")()',
    "type(data)",
    'compile("1", "x", "eval")',
    "globals()",
    "print(1)",
    "x" * 5000,
    "1 + " * 1250 + "1",
    "(" * 201 + "1" + ")" * 201,
    "[" * 100 + "]" * 100,
    "-" * 3000 + "1",
    "f'{data}'",
    "b'abc'",
    "await data",
    "(y := 1)",
    "len(*data)",
    "len(**data)",
    "data._private",
    "data[0]()",
]


@pytest.mark.parametrize("expression", REJECTED_AT_COMPILE, ids=lambda e: e[:40])
def test_hostile_expression_rejected_at_compile(expression: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expression)
    assert str(info.value)


HOSTILE = [
    '__import__("os")',
    "data.__class__",
    "().__class__.__bases__",
    '"{0.__class__}".format(data)',
    '"{0.__class__.__init__.__globals__}".format(data)',
    'data["body"]["s"].format_map(data)',
    "str.format('{0.__class__}', data)",
    "[x for x in data]",
    "lambda: 1",
    "9**9**9",
    "10**100000",
    "(-2) ** 100000",
    "10000 ** 10000",
    "1.5 ** 100000",
    "1 << 10**6",
    "99999999999 * 99999999999 * 99999999999 * 99999999999 * 99999999999 ** 1000",
    '"a"*10**9',
    "[1]*10**9",
    "(1,)*10**9",
    '10**9 * "a"',
    'data["body"]["s"] * 10**8',
    '"a" * 99999 + "b" * 99999',
    "x" * 5000,
    "1 + " * 1250 + "1",
    "[" * 100 + "]" * 100,
    "data.clear()",
    'data["body"].pop("x")',
    'data["body"].update({"x": 2})',
    'data.setdefault("new", 1)',
    'data["body"]["n"].append(4)',
    'data["body"]["n"].sort()',
    "data.popitem()",
    "os",
    'open("x")',
    "int('9' * 5000)",
]


@pytest.mark.parametrize("expression", HOSTILE, ids=lambda e: e[:40])
def test_hostile_expression_is_harmless(expression: str) -> None:
    payload = sample()
    before = copy.deepcopy(payload)
    try:
        compiled = compile_filter(expression)
    except FilterError:
        return
    assert compiled.matches(payload) is False
    assert compiled.errors == 1
    matched, error = compiled.explain(payload)
    assert matched is False
    assert error is not None
    assert payload == before


@pytest.mark.parametrize(
    "expression",
    ["data.clear()", 'data["body"].pop("x")', 'data["body"]["n"].append(4)', "data.popitem()"],
)
def test_mutating_methods_are_refused_when_saved(expression: str) -> None:
    with pytest.raises(FilterError, match="not allowed"):
        compile_filter(expression)


@pytest.mark.parametrize(
    "expression",
    ['data["body"]["n"].get(0)', 'data["body"].count(1)', 'data["body"]["x"].lower()'],
)
def test_allowed_methods_on_the_wrong_type_fail_when_evaluated(expression: str) -> None:
    """Whether a method is allowed depends on the value's type, known only at run time."""
    payload = {"body": {"x": 1, "n": [1, 2, 3]}, "headers": {"y": "z"}}
    before = copy.deepcopy(payload)
    compiled = compile_filter(expression)
    assert compiled.matches(payload) is False
    matched, error = compiled.explain(payload)
    assert matched is False and error is not None and "not allowed" in error
    assert payload == before


def test_deep_parentheses_add_no_depth() -> None:
    # 200 levels of grouping parentheses is the parser's limit and creates no AST nodes:
    # the expression is just the constant 1 and must compile and evaluate quickly.
    compiled = compile_filter("(" * 200 + "1" + ")" * 200)
    assert compiled.matches({}) is True
    assert compiled.errors == 0


def test_deep_parentheses_around_attack_still_rejected() -> None:
    with pytest.raises(FilterError):
        compile_filter("(" * 150 + "data.__class__" + ")" * 150)


def test_long_expression_at_the_limit_is_allowed() -> None:
    expression = 'data["k"] == "' + "a" * 4000 + '"'
    assert len(expression) < 4096
    compiled = compile_filter(expression)
    assert compiled.matches({"k": "a" * 4000}) is True
    assert compiled.matches({"k": "b"}) is False


# --- work bounds that need a watchdog ----------------------------------------------------------
# These run in a child process: if the bound is missing they would hang or exhaust memory.


def run_bounded(expression: str, seconds: float = 5.0) -> str:
    return evaluate_in_child(expression, {"body": {}}, seconds)


def test_watchdog_sees_ordinary_results() -> None:
    assert run_bounded("1 == 1") == "matched"
    assert run_bounded("9**9**9") == "rejected"
    assert run_bounded('data["body"]["x"] ** 9**9 == 1') == "no-match"
    assert run_bounded("data.__class__") == "rejected"


def test_nested_list_comparison_is_bounded() -> None:
    side = "[[[1]*100000]*100000]*100000"
    assert run_bounded(f"{side} == {side}") in ("rejected", "no-match")


def test_str_of_nested_list_is_bounded() -> None:
    assert run_bounded("len(str([[1]*100000]*100000)) > 0") in ("rejected", "no-match")


# --- constants: folded, and shared between filters of one shape -----------------------------

SHAPES = [
    'data["body"][{0}] == {1}',
    '{0} == data[{1}] and data["n"] > {2}',
    'data["x"] in [{0}, {1}, {2}]',
    "data.get({0}, {1}) == {2}",
    '{0} if data["a"] == {1} else {2}',
    "data[{0}] == {1} {2}",
    "data[{0}]({1}, {2})",
]
LITERALS = st.one_of(
    st.integers(-3, 10**6).map(str),
    st.floats(0, 1e6, allow_nan=False).map(repr),
    st.text(alphabet="ab '\"\\#", max_size=4).map(repr),
    st.sampled_from(["True", "False", "None", "'a' 'b'", "00", "-0", "2**3", "u'x'", "(1)"]),
)
SAMPLES = [{}, {"body": {"a": 1}, "a": 1, "n": 2, "x": "b"}, {"x": 1.5, "a": True, "n": 0}]


def _shape(compiled: CompiledFilter) -> tuple[object, ...]:
    tree = compiled.template.tree if compiled.template else None
    typed = [(type(c), c) for c in compiled.constants]
    return ast.dump(tree) if tree else None, typed, [compiled.matches(p) for p in SAMPLES]


def _compiled_or_error(source: str) -> tuple[object, ...] | str:
    try:
        return _shape(compile_filter(source))
    except FilterError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(SHAPES),
    st.tuples(LITERALS, LITERALS, LITERALS),
    st.tuples(LITERALS, LITERALS, LITERALS),
)
def test_a_shape_compiled_before_gives_what_a_fresh_compile_gives(shape, first, second):
    _compiled_or_error(shape.format(*first))  # the shape is now known
    source = shape.format(*second)
    known = _compiled_or_error(source)  # read from the literals when they are plain
    filter_templates._known.clear()
    assert known == _compiled_or_error(source)


def test_filters_of_one_shape_share_a_template_and_equal_constants():
    first, second = (compile_filter(f'data["body"]["customer"] == "c{n}"') for n in (1, 2))
    assert first.template is second.template
    assert second.constants == ("body", "customer", "c2")
    assert first.constants[0] is second.constants[0]  # "body" is stored once
    assert second.matches({"body": {"customer": "c2"}}) is True
    assert second.matches({"body": {"customer": "c1"}}) is False


@pytest.mark.parametrize(
    ("expression", "constants"),
    [
        ('data["x"] == 2**10', ("x", 1024)),
        ('data["x"] == -1', ("x", -1)),
        ('data["x"] == "a" + "b"', ("x", "ab")),
        ('data["x"] in [1, 2]', ("x", 1, 2)),  # lists stay lists (their items are constants)
        ('data["x"] == len("abc") and not False', ("x", 3, True)),
    ],
)
def test_constant_parts_are_folded(expression: str, constants: tuple[object, ...]) -> None:
    assert compile_filter(expression).constants == constants


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("9**9**9", "'9**9**9' can never be evaluated: NumberTooHigh"),
        ('data["x"] == "a" * 10**10', "'\"a\" * 10**10' can never be evaluated: IterableTooLong"),
        ('data["x"] or 1/0', "'1/0' can never be evaluated: ZeroDivisionError"),
        ('data["x"][0:int("x")]', "'int(\"x\")' can never be evaluated: ValueError"),
        ('"{0}".format(data)', "attribute 'format' is not allowed"),
        ("data.keys().clear()", "attribute 'clear' is not allowed"),
        ("len.real", "'len' has no attributes"),
        ('"abc".get(data["k"])', "'\"abc\".get' can never be evaluated"),
    ],
)
def test_filters_that_can_never_evaluate_are_refused(expression: str, needle: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expression)
    assert needle in str(info.value)
