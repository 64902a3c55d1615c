"""Subscriber filters: Python-like boolean expressions over `data`, run by simpleeval.

An expression is parsed and checked once (length, node count, depth, allowed syntax and
names) and then evaluated many times. Evaluation never raises: an error means "no match".
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpleeval
import structlog

from switchd.filter_templates import SLOT_NAMES, Template, from_known_shape, templated

log = structlog.get_logger("switchd.filters")

MAX_EXPRESSION_LENGTH = 4096
MAX_NODES = 300
MAX_DEPTH = 40
MAX_INT_BITS = 4096
MAX_SEQUENCE_LENGTH = 100_000
MATCH_ALL = ("", "true")

ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Subscript,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.Slice,
    ast.Load,
    ast.keyword,
    ast.boolop,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
)

_READ_ONLY_STR = {
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
    "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind",
    "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith",
    "strip", "swapcase", "title", "upper",
}  # fmt: skip
# Read-only attributes only: a filter must never change the payload other filters see.
ALLOWED_ATTRS: dict[Any, set[str]] = {
    str: _READ_ONLY_STR,
    dict: {"get", "keys", "values", "items"},
    list: {"count", "index"},
    tuple: {"count", "index"},
    int: {"real", "imag"},
    float: {"real", "imag", "is_integer"},
    bool: set(),
    type(None): set(),
}


class FilterError(ValueError):
    """The expression cannot be used as a filter; the message says why."""


def _bounded_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh("integer result too large")
    return value


def _bounded_len(value: Any) -> Any:
    if _size(value, MAX_SEQUENCE_LENGTH) > MAX_SEQUENCE_LENGTH:
        raise simpleeval.IterableTooLong("result too large")
    return value


def _size(value: Any, limit: int) -> int:
    """Characters plus elements in `value`, nested containers included; stops past `limit`."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | tuple):
        return 1
    total = len(value)
    for item in value:
        if total > limit:
            break
        if isinstance(item, str | list | tuple):
            total += _size(item, limit - total)
    return total


def _checked(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        _precheck(op, a, b)
        return _bounded_len(_bounded_int(op(a, b)))

    return run


def _precheck(op: Callable[[Any, Any], Any], a: Any, b: Any) -> None:
    """Refuse operations whose result would be too large before computing them."""
    ints = isinstance(a, int) and isinstance(b, int)
    if op is operator.pow and ints and b > 0 and max(a.bit_length(), 1) * b > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh("power too large")
    if op is operator.mul and ints and a.bit_length() + b.bit_length() > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh("product too large")
    if op is operator.mul and _repeat_length(a, b) > MAX_SEQUENCE_LENGTH:
        raise simpleeval.IterableTooLong("repetition too long")
    if op is operator.lshift and isinstance(b, int) and b > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh("shift too large")


def _repeat_length(a: Any, b: Any) -> int:
    for seq, times in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return _size(seq, MAX_SEQUENCE_LENGTH) * times
    return 0


def _modulo(a: Any, b: Any) -> Any:
    if isinstance(a, str | bytes):  # printf-style formatting can build huge strings
        raise simpleeval.FeatureNotAvailable("string formatting with % is not allowed")
    return operator.mod(a, b)


def _round(number: Any, ndigits: int | None = None) -> Any:
    if ndigits is not None and not (isinstance(ndigits, int) and abs(ndigits) <= 30):
        raise simpleeval.FeatureNotAvailable("round() takes ndigits between -30 and 30")
    return round(number, ndigits)


OPERATORS = dict(simpleeval.DEFAULT_OPERATORS)
OPERATORS.update(
    {
        ast.Pow: _checked(operator.pow),
        ast.Mult: _checked(operator.mul),
        ast.Add: _checked(operator.add),
        ast.LShift: _checked(operator.lshift),
        ast.Mod: _modulo,
    }
)

HELPERS: dict[str, Callable[..., Any]] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "any": any,
    "all": all,
    "round": _round,
}
NAMES = ("data", "True", "False", "None")
ATTRIBUTE_NAMES = frozenset().union(*ALLOWED_ATTRS.values())


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    """simpleeval with switchd's operators, helpers and attribute allow-list."""

    def __init__(self) -> None:
        super().__init__(
            operators=OPERATORS, functions=HELPERS, names={}, allowed_attrs=ALLOWED_ATTRS
        )

    def _check_disallowed_items(self, item: Any) -> None:
        # Overrides simpleeval's private per-node result check (fenced: simpleeval <1.1 in
        # pyproject.toml, tests/test_private_apis.py): values here are JSON data, literals
        # and the HELPERS above, none a module or a forbidden function, and walking every
        # container on each node costs O(payload).
        return


@dataclass(slots=True)
class CompiledFilter:
    """A checked expression ready for repeated evaluation: a template shared by the
    filters of the same shape, and this filter's constants (see filter_templates)."""

    source: str
    template: Template | None  # None: matches everything
    constants: tuple[Any, ...] = ()
    errors: int = 0
    on_error: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def matches(self, data: dict[str, Any]) -> bool:
        """True when the expression is truthy for `data`; any error counts as no match."""
        try:
            return self._evaluate(_SHARED, data)
        except Exception as exc:
            self.errors += 1
            if self.on_error is not None:
                self.on_error()
            log.debug("filter_error", expression=self.source, error=f"{type(exc).__name__}: {exc}")
            return False

    def explain(self, data: dict[str, Any]) -> tuple[bool, str | None]:
        """Evaluate and also return the error message, if any (for tools, not the hot path)."""
        try:
            return self._evaluate(_Evaluator(), data), None
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def _evaluate(self, evaluator: _Evaluator, data: dict[str, Any]) -> bool:
        if self.template is None:
            return True
        names = dict(zip(SLOT_NAMES, self.constants, strict=False))
        names["data"] = data
        evaluator.names = names
        try:
            return bool(evaluator.eval(self.source, previously_parsed=self.template.tree))
        finally:
            evaluator.names = {}


_SHARED = _Evaluator()  # evaluation is synchronous, so one evaluator serves every filter


def compile_filter(expression: str | None) -> CompiledFilter:
    """Parse and check an expression; raise FilterError naming the problem.

    Constant parts are evaluated now (and replaced by their value when it is small): one
    that fails, e.g. `9**9**9`, would fail on every event, so the filter is refused."""
    source = (expression or "").strip()
    if source.lower() in MATCH_ALL:
        return CompiledFilter(source=source or "True", template=None)
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise FilterError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    known = from_known_shape(source)
    if known is not None:
        return CompiledFilter(source, *known)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"syntax error: {exc.msg} (column {exc.offset})") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise FilterError("expression cannot be parsed") from exc
    _check_tree(tree)
    return CompiledFilter(source, *templated(_fold(tree.body, source), source))


def never_matching(source: str) -> CompiledFilter:
    """A stand-in for a stored filter that no longer compiles: it matches nothing."""
    false = compile_filter("False")
    return CompiledFilter(source, false.template, false.constants)


@dataclass(frozen=True)
class Verdict:
    """What a filter says of one sample: whether it compiles, whether it matches, and the
    compile or evaluation error, if any."""

    valid: bool
    matches: bool | None  # None when it does not compile
    error: str | None


def check_filter(expression: str | None, data: dict[str, Any]) -> Verdict:
    """Compile `expression` and evaluate it on `data` as subscribers do, explaining errors
    (for tools and the console, not the publish path)."""
    try:
        compiled = compile_filter(expression)
    except FilterError as exc:
        return Verdict(valid=False, matches=None, error=str(exc))
    matched, error = compiled.explain(data)
    return Verdict(valid=True, matches=matched, error=error)


def _check_tree(tree: ast.Expression) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise FilterError(f"expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise FilterError(f"expression nested deeper than {MAX_DEPTH} levels")
        _check_node(node)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_node(node: ast.AST) -> None:
    if not isinstance(node, ALLOWED_NODES):
        raise FilterError(f"{type(node).__name__} is not allowed in a filter")
    if isinstance(node, ast.Name) and node.id not in NAMES and node.id not in HELPERS:
        raise FilterError(f"unknown name {node.id!r}: only 'data' and helpers are available")
    if isinstance(node, ast.Attribute) and node.attr not in ATTRIBUTE_NAMES:
        raise FilterError(
            f"attribute {node.attr!r} is not allowed: filters may use only the read-only "
            "methods of strings, dicts, lists and tuples, and .real/.imag of numbers"
        )
    if isinstance(node, ast.Attribute) and _names_a_helper(node.value):
        raise FilterError(f"{node.value.id!r} has no attributes a filter may use")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name | ast.Attribute):
            raise FilterError("only helper functions and methods may be called")
        if any(k.arg is None for k in node.keywords):
            raise FilterError("argument unpacking is not allowed")
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        raise FilterError("bytes literals are not allowed")


def _names_a_helper(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id != "data"


# --- constant folding ---------------------------------------------------------------------

FOLDABLE = (
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Subscript,
    ast.Attribute,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
)
MAX_FOLDED_LENGTH = 256  # a folded string longer than this stays an expression


def _fold(body: ast.expr, source: str) -> ast.expr:
    """Evaluate every largest sub-expression that does not read `data`; FilterError if
    one fails. A small scalar result replaces the sub-expression."""
    readers = _data_readers(body)

    def fold(node: ast.AST, call_target: bool = False) -> ast.AST:
        if isinstance(node, FOLDABLE) and id(node) not in readers:
            value = _constant_value(node, source)
            if not call_target and _small(value):
                return ast.copy_location(ast.Constant(value=value), node)
            if not call_target:
                return node  # it evaluates; its own constants become slots
        for name, child in ast.iter_fields(node):
            if isinstance(child, ast.AST):
                setattr(node, name, fold(child, isinstance(node, ast.Call) and name == "func"))
            elif isinstance(child, list):
                setattr(node, name, [fold(c) if isinstance(c, ast.AST) else c for c in child])
        return node

    return fold(body)  # type: ignore[return-value]


def _data_readers(tree: ast.AST) -> set[int]:
    """The ids of the nodes whose sub-tree names `data`."""
    readers: set[int] = set()

    def visit(node: ast.AST) -> bool:
        reads = isinstance(node, ast.Name) and node.id == "data"
        for child in ast.iter_child_nodes(node):
            reads = visit(child) or reads
        if reads:
            readers.add(id(node))
        return reads

    visit(tree)
    return readers


def _constant_value(node: ast.AST, source: str) -> Any:
    try:
        return _SHARED.eval(source, previously_parsed=node)
    except Exception as exc:
        part = ast.get_source_segment(source, node) or ast.unparse(node)
        raise FilterError(f"{part!r} can never be evaluated: {type(exc).__name__}: {exc}") from exc


def _small(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_FOLDED_LENGTH
    return value is None or isinstance(value, bool | int | float | complex)
