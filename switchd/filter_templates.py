"""Filter templates: what filters that differ only in their constants share.

A checked filter's tree has each constant replaced by a slot (a name no filter can use:
`_0`, `_1`, … in source order); the tree with slots is the template, the constants are
the filter's own. `data["body"]["customer"] == "c1"` and `… == "c2"` share one template,
so 100,000 per-customer filters hold one tree, not 100,000.

Templates are found by the source with each constant's text blanked out. A source made
of plain literals only (strings without escapes, decimal numbers, True/False/None) whose
blanked text is already known needs no parsing at all: its constants are read from the
literals' text (`from_known_shape`). That is sound because the tokenizer gives such a
literal the same token type whatever its value, so the parser builds the same tree.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from switchd.filter_index import Equality, equalities

MAX_SLOTS = 300  # at most one per node (filters.MAX_NODES)
SLOT_NAMES = tuple(f"_{i}" for i in range(MAX_SLOTS))
MAX_TEMPLATES = 4096  # shapes remembered (a bound on memory, not on correctness)
BLANK = "\x01"  # never in a cached source: those are printable ASCII
# Sources whose templates are shared: printable ASCII on one line (offsets are characters).
PLAIN = re.compile(r"[\t\x20-\x7e]*")
LITERAL = re.compile(
    r"""(?<![\w.])(?:"[^"\\\n]*"|'[^'\\\n]*')"""  # a string without prefix or escapes
    r"|(?<![\w.])(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?![\w.])"  # a decimal int or float
    r"|(?<![\w.])(?:True|False|None)(?!\w)",
    re.ASCII,
)
KEYWORDS: dict[str, Any] = {"True": True, "False": False, "None": None}


@dataclass(frozen=True, slots=True, eq=False)
class Template:
    """A filter's tree with slots for its constants."""

    tree: ast.expr
    reference: tuple[Any, ...]  # the constants of the filter that made it (shared objects)
    equalities: tuple[Equality, ...]  # for candidate pruning (filter_index)


@dataclass(slots=True)
class _Known:
    template: Template
    literal: bool  # its slots are exactly the source's plain literals: from_known_shape works


_known: dict[str, _Known] = {}


def templated(body: ast.expr, source: str) -> tuple[Template, tuple[Any, ...]]:
    """The template of a checked, folded tree (consumed: its constants become slots) and
    the filter's constants."""
    body, found = _lift(body)
    spans = [span for span, _ in found]
    values = tuple(value for _, value in found)
    key = _blanked(source, spans, values) if PLAIN.fullmatch(source) else None
    known = _known.get(key) if key is not None else None
    if known is None:
        known = _Known(Template(body, values, equalities(body, SLOT_NAMES)), literal=False)
        if key is not None:
            _remember(key, known)
    if key is not None and not known.literal:
        known.literal = _same_literals(_literals(source), (key, spans, values))
    return known.template, _shared(known.template.reference, values)


def from_known_shape(source: str) -> tuple[Template, tuple[Any, ...]] | None:
    """The template and constants of a source made of plain literals in a shape compiled
    before (see the module's doc), without parsing; None otherwise."""
    if not PLAIN.fullmatch(source):
        return None
    key, _, values = _literals(source)
    known = _known.get(key)
    if known is None or not known.literal:
        return None
    return known.template, _shared(known.template.reference, values)


Span = tuple[int, int, int, int]


def _lift(body: ast.expr) -> tuple[ast.expr, list[tuple[Span, Any]]]:
    """Replace each constant by a slot, numbered in source order; the constants' spans
    and values in that order."""
    found: list[tuple[Span, Any, ast.Name]] = []

    def slot(node: ast.Constant) -> ast.Name:
        name = ast.copy_location(ast.Name(id="", ctx=ast.Load()), node)
        found.append((_span(node), node.value, name))
        return name

    if isinstance(body, ast.Constant):
        body = slot(body)
    for parent in ast.walk(body):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, ast.Constant):
                setattr(parent, field, slot(value))
            elif isinstance(value, list) and any(isinstance(v, ast.Constant) for v in value):
                setattr(
                    parent, field, [slot(v) if isinstance(v, ast.Constant) else v for v in value]
                )
    found.sort(key=lambda item: item[0])
    for number, (_, _, name) in enumerate(found):
        name.id = SLOT_NAMES[number]
    return body, [(span, value) for span, value, _ in found]


def _span(node: ast.AST) -> Span:
    return (node.lineno, node.col_offset, node.end_lineno or 0, node.end_col_offset or 0)


def _same_literals(
    a: tuple[str, list[Span], tuple[Any, ...]], b: tuple[str, list[Span], tuple[Any, ...]]
) -> bool:
    """Same blanked text, spans, and values of the same types."""
    return a[:2] == b[:2] and all(
        type(x) is type(y) and x == y for x, y in zip(a[2], b[2], strict=True)
    )


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "k"
    if isinstance(value, str):
        return "s"
    return "n" if isinstance(value, int | float) else "v"


def _blanked(source: str, spans: list[Span], values: tuple[Any, ...]) -> str:
    """`source` with each constant's text replaced by a blank and its kind."""
    parts, last = [], 0
    for (_, start, _, end), value in zip(spans, values, strict=True):
        parts += [source[last:start], BLANK, _kind(value)]
        last = end
    parts.append(source[last:])
    return "".join(parts)


def _literals(source: str) -> tuple[str, list[Span], tuple[Any, ...]]:
    """`source` with its plain literals blanked, their spans and their values."""
    parts, spans, values, last = [], [], [], 0
    for match in LITERAL.finditer(source):
        text = match.group()
        value: Any
        if text[0] in "\"'":
            value = text[1:-1]
        elif text in KEYWORDS:
            value = KEYWORDS[text]
        else:
            value = float(text) if "." in text else int(text)
        parts += [source[last : match.start()], BLANK, _kind(value)]
        spans.append((1, match.start(), 1, match.end()))
        values.append(value)
        last = match.end()
    parts.append(source[last:])
    return "".join(parts), spans, tuple(values)


def _shared(reference: tuple[Any, ...], values: tuple[Any, ...]) -> tuple[Any, ...]:
    """`values`, reusing the reference's equal objects (keys like "body" are then stored
    once), or the reference itself when all are equal."""
    shared = tuple(
        ref if type(ref) is type(value) and ref == value else value
        for ref, value in zip(reference, values, strict=True)
    )
    return reference if all(a is b for a, b in zip(shared, reference, strict=True)) else shared


def _remember(key: str, known: _Known) -> None:
    if len(_known) >= MAX_TEMPLATES:
        del _known[next(iter(_known))]  # the oldest
    _known[key] = known
