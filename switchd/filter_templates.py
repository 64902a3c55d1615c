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
    r"""(?<![\w.])("[^"\\\n]*"|'[^'\\\n]*')"""  # a string without prefix or escapes
    r"|(?<![\w.])((?:0|[1-9][0-9]*)(?:\.[0-9]+)?)(?![\w.])"  # a decimal int or float
    r"|(?<![\w.])(True|False|None)(?!\w)",
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
        known.literal = _plain_literals(source, key, spans, values)
    return known.template, _shared(known.template.reference, values)


def from_known_shape(source: str) -> tuple[Template, tuple[Any, ...]] | None:
    """The template and constants of a source made of plain literals in a shape compiled
    before (see the module's doc), without parsing; None otherwise."""
    if not PLAIN.fullmatch(source):
        return None
    key, values = _literals(source)
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


def _plain_literals(source: str, key: str, spans: list[Span], values: tuple[Any, ...]) -> bool:
    """Whether the constants are exactly the source's plain literals (same blanked text,
    spans, values and types): then from_known_shape may read them from the text."""
    literal_key, literal_values = _literals(source)
    return (
        literal_key == key
        and _literal_spans(source) == spans
        and all(type(a) is type(b) and a == b for a, b in zip(literal_values, values, strict=True))
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


def _literals(source: str) -> tuple[str, tuple[Any, ...]]:
    """`source` with its plain literals blanked (with their kinds), and their values."""
    pieces = LITERAL.split(source)  # text, then per literal: its 3 groups and the text after
    key, values = [pieces[0]], []
    for at in range(1, len(pieces), 4):
        string, number, keyword, after = pieces[at : at + 4]
        value: Any
        if string is not None:
            value, kind = string[1:-1], "s"
        elif number is not None:
            value, kind = (float(number) if "." in number else int(number)), "n"
        else:
            value, kind = KEYWORDS[keyword], "k"
        values.append(value)
        key += [BLANK, kind, after]
    return "".join(key), tuple(values)


def _literal_spans(source: str) -> list[Span]:
    return [(1, match.start(), 1, match.end()) for match in LITERAL.finditer(source)]


def _shared(reference: tuple[Any, ...], values: tuple[Any, ...]) -> tuple[Any, ...]:
    """`values`, reusing the reference's equal objects (keys like "body" are then stored
    once), or the reference itself when all are equal."""
    shared, same = [], True
    for ref, value in zip(reference, values, strict=True):
        if ref == value and type(ref) is type(value):
            shared.append(ref)
        else:
            shared.append(value)
            same = False
    return reference if same else tuple(shared)


def _remember(key: str, known: _Known) -> None:
    if len(_known) >= MAX_TEMPLATES:
        del _known[next(iter(_known))]  # the oldest
    _known[key] = known
