"""Candidate pruning: evaluate only the filters that can possibly match.

Many filters require an equality at the top level, e.g.
`data["body"]["customer"] == "c42" and data["amount"] > 10`. Such a filter is false for
every payload whose `data["body"]["customer"]` is not equal to "c42" (or is missing:
an error also means no match). The index files each subscriber under one required
(path, value) pair; at publish time only subscribers filed under the payload's own
values, plus those with no indexable condition, are evaluated. The result is exactly
what evaluating every filter gives, in the same order (oldest first: `order`).

The index changes one subscriber at a time (`add`, `remove`), in time proportional to
the subscribers filed under the same value, never to the topic's.
"""

from __future__ import annotations

import ast
from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, Protocol

Path = tuple[str | int, ...]
Equality = tuple[tuple[int, ...], int]  # the slots of a path's keys, the slot of the value
MERGE_BY_INSERTION = 16  # candidates inserted one by one into the always-evaluated list
_MISSING = object()


class Filtered(Protocol):
    """What the index needs of a subscriber: its compiled filter and its place in order."""

    @property
    def compiled(self) -> Any: ...

    @property
    def order(self) -> tuple[float, str]: ...


def equalities(tree: ast.expr, slots: Sequence[str]) -> tuple[Equality, ...]:
    """Every top-level `data[…]… == constant` conjunct of a template (see
    filter_templates), in order, as slot numbers."""
    numbers = {name: number for number, name in enumerate(slots)}
    found = (_equality(conjunct, numbers) for conjunct in _conjuncts(tree))
    return tuple(equality for equality in found if equality is not None)


def required_equality(compiled: Any) -> tuple[Path, Hashable] | None:
    """The first top-level `data[...]... == constant` conjunct of a compiled filter whose
    keys and value can be indexed, if any."""
    if compiled.template is None:
        return None
    constants = compiled.constants
    for keys, value_slot in compiled.template.equalities:
        path = tuple(constants[slot] for slot in keys)
        value = constants[value_slot]
        if all(type(key) in (str, int) for key in path) and _indexable(value):
            return path, value
    return None


def _conjuncts(tree: ast.expr) -> list[ast.expr]:
    if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And):
        return [part for value in tree.values for part in _conjuncts(value)]
    return [tree]


def _equality(node: ast.expr, slots: dict[str, int]) -> Equality | None:
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return None
    if not isinstance(node.ops[0], ast.Eq):
        return None
    for left, right in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
        keys = _data_path(left, slots)
        if keys is not None and isinstance(right, ast.Name) and right.id in slots:
            return keys, slots[right.id]
    return None


def _indexable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _data_path(node: ast.expr, slots: dict[str, int]) -> tuple[int, ...] | None:
    keys: list[int] = []
    while isinstance(node, ast.Subscript):
        key = node.slice
        if not (isinstance(key, ast.Name) and key.id in slots):
            return None
        keys.append(slots[key.id])
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


def _order(subscriber: Filtered) -> tuple[float, str]:
    return subscriber.order


class TopicIndex:
    """The enabled subscribers of one topic, filed by a required equality where they
    have one; each list is kept in `order`."""

    def __init__(self, subscribers: Iterable[Filtered] = ()) -> None:
        self._always: list[Filtered] = []  # evaluated for every payload
        # A value's group: the one subscriber filed under it, or a list of several in order
        # (one list per value would be 100,000 more objects for the garbage collector).
        self._by_path: dict[Path, dict[Hashable, Filtered | list[Filtered]]] = {}
        self._count = 0
        for subscriber in subscribers:
            self.add(subscriber)

    def __len__(self) -> int:
        return self._count

    def add(self, subscriber: Filtered) -> None:
        """File a subscriber (not already filed)."""
        required = required_equality(subscriber.compiled)
        self._count += 1
        if required is None:
            insort(self._always, subscriber, key=_order)
            return
        path, value = required
        by_value = self._by_path.setdefault(path, {})
        group = by_value.setdefault(value, subscriber)
        if isinstance(group, list):
            insort(group, subscriber, key=_order)
        elif group is not subscriber:
            by_value[value] = sorted((group, subscriber), key=_order)

    def remove(self, subscriber: Filtered) -> None:
        """Unfile a subscriber that `add` filed (the same object)."""
        required = required_equality(subscriber.compiled)
        if required is None:
            _delete(self._always, subscriber)
        else:
            path, value = required
            by_value = self._by_path[path]
            group = by_value[value]
            if isinstance(group, list):
                _delete(group, subscriber)
                if len(group) == 1:
                    by_value[value] = group[0]
            elif group is subscriber:
                del by_value[value]
                if not by_value:
                    del self._by_path[path]
            else:
                raise ValueError("subscriber is not filed here")
        self._count -= 1

    def drain(self) -> Iterator[None]:
        """Empty the index a group at a time, pausing (yielding) after each: freeing a
        large index at once would hold the event loop."""
        self._always = []
        while self._by_path:
            _, by_value = self._by_path.popitem()
            while by_value:
                by_value.popitem()
                yield
        self._count = 0

    def members(self) -> list[Filtered]:
        """Every filed subscriber, in order."""
        groups = [
            _listed(group) for by_value in self._by_path.values() for group in by_value.values()
        ]
        return sorted([*self._always, *(s for group in groups for s in group)], key=_order)

    def candidates(self, data: dict[str, Any]) -> Sequence[Filtered]:
        """Subscribers whose filter may accept `data`, in order."""
        if not self._by_path:
            return self._always
        groups: list[Sequence[Filtered]] = []
        for path, by_value in self._by_path.items():
            actual = _lookup(data, path)
            if actual is _MISSING or not isinstance(actual, Hashable):
                continue
            try:
                group = by_value.get(actual)
            except TypeError:  # a hashable-looking value that cannot be hashed
                continue
            if group is not None:
                groups.append(_listed(group))
        return _merged(self._always, groups)

    def matching(self, data: dict[str, Any]) -> list[Filtered]:
        """Subscribers whose filter accepts `data`."""
        return [s for s in self.candidates(data) if s.compiled.matches(data)]


def _delete(filed: list[Filtered], subscriber: Filtered) -> None:
    position = bisect_left(filed, subscriber.order, key=_order)
    if position == len(filed) or filed[position] is not subscriber:
        raise ValueError("subscriber is not filed here")
    del filed[position]


def _listed(group: Filtered | list[Filtered]) -> Sequence[Filtered]:
    return group if isinstance(group, list) else (group,)


def _merged(always: list[Filtered], groups: list[Sequence[Filtered]]) -> Sequence[Filtered]:
    """The always-evaluated subscribers and the groups found, in order."""
    if not groups:
        return always
    if not always and len(groups) == 1:
        return groups[0]
    found = [s for group in groups for s in group]
    if len(found) > MERGE_BY_INSERTION:
        return sorted([*always, *found], key=_order)
    merged = list(always)
    for subscriber in found:
        insort(merged, subscriber, key=_order)
    return merged
