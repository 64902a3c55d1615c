"""Candidate pruning: evaluate only the filters that can possibly match.

Many filters require an equality at the top level, e.g.
`data["body"]["customer"] == "c42" and data["amount"] > 10`. Such a filter is false for
every payload whose `data["body"]["customer"]` is not equal to "c42" (or is missing:
an error also means no match). The index files each subscriber under one required
(path, value) pair; at publish time only subscribers filed under the payload's own
values, plus those with no indexable condition, are evaluated. The result is exactly
what evaluating every filter gives, in the same order.
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

Path = tuple[str | int, ...]
_MISSING = object()


class Filtered(Protocol):
    """What the index needs of a subscriber: its compiled filter."""

    @property
    def compiled(self) -> Any: ...


def required_equality(tree: ast.expr | None) -> tuple[Path, Hashable] | None:
    """The first top-level `data[...]... == constant` conjunct of a filter, if any."""
    if tree is None:
        return None
    for conjunct in _conjuncts(tree):
        found = _equality(conjunct)
        if found is not None:
            return found
    return None


def _conjuncts(tree: ast.expr) -> list[ast.expr]:
    if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And):
        return [part for value in tree.values for part in _conjuncts(value)]
    return [tree]


def _equality(node: ast.expr) -> tuple[Path, Hashable] | None:
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return None
    if not isinstance(node.ops[0], ast.Eq):
        return None
    for left, right in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
        path = _data_path(left)
        if path is not None and isinstance(right, ast.Constant) and _indexable(right.value):
            return path, right.value
    return None


def _indexable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _data_path(node: ast.expr) -> Path | None:
    keys: list[str | int] = []
    while isinstance(node, ast.Subscript):
        key = node.slice
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str | int)):
            return None
        if isinstance(key.value, bool):
            return None
        keys.append(key.value)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "data" and keys:
        return tuple(reversed(keys))
    return None


def _lookup(data: Any, path: Path) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


class TopicIndex:
    """The subscribers of one topic, filed by a required equality where they have one."""

    def __init__(self, subscribers: Sequence[Filtered]) -> None:
        self.subscribers = list(subscribers)
        self._always: list[int] = []  # positions evaluated for every payload
        self._by_path: dict[Path, dict[Hashable, list[int]]] = {}
        for position, subscriber in enumerate(self.subscribers):
            required = required_equality(subscriber.compiled.tree)
            if required is None:
                self._always.append(position)
            else:
                path, value = required
                self._by_path.setdefault(path, {}).setdefault(value, []).append(position)

    def candidates(self, data: dict[str, Any]) -> list[Filtered]:
        """Subscribers whose filter may accept `data`, in their original order."""
        if not self._by_path:
            return self.subscribers
        positions = list(self._always)
        for path, by_value in self._by_path.items():
            actual = _lookup(data, path)
            if actual is _MISSING or not isinstance(actual, Hashable):
                continue
            try:
                positions.extend(by_value.get(actual, ()))
            except TypeError:  # a hashable-looking value that cannot be hashed
                continue
        return [self.subscribers[p] for p in sorted(positions)]

    def matching(self, data: dict[str, Any]) -> list[Filtered]:
        """Subscribers whose filter accepts `data`."""
        return [s for s in self.candidates(data) if s.compiled.matches(data)]
