"""Fences around the private APIs of other projects that switchd uses.

Each use has an upper version bound in pyproject.toml and a one-line reason where it is
used; here, a test per use fails with a message saying what to review when an upgrade
removes the name, changes its signature, or moves what switchd relies on.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sqlite3
import threading
from typing import Any

import aiosqlite
import pytest
import simpleeval

from switchd import filters
from switchd.filter_templates import Template
from switchd.filters import CompiledFilter, FilterError, compile_filter
from tests.test_filters import HOSTILE, REJECTED_AT_COMPILE, sample

# --- aiosqlite: db.py runs its group commits through Connection._execute and _conn ---------


def test_aiosqlite_execute_and_conn_are_what_db_py_calls():
    execute = getattr(aiosqlite.Connection, "_execute", None)
    assert inspect.iscoroutinefunction(execute), (
        "aiosqlite.Connection._execute is gone: switchd/db.py (Database._flush) needs another "
        "way to run a function on the connection's thread"
    )
    parameters = [(p.name, p.kind) for p in inspect.signature(execute).parameters.values()]
    assert parameters == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("fn", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ], f"aiosqlite.Connection._execute changed signature: {parameters}; review switchd/db.py"
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn", None), property), (
        "aiosqlite.Connection._conn is no longer a property: review switchd/db.py"
    )


async def test_aiosqlite_execute_runs_on_the_connection_thread_in_order(tmp_path):
    """What db.py relies on: `_execute(fn, conn._conn, ...)` calls fn with the sqlite3
    connection on aiosqlite's thread, in order with the connection's other calls."""
    conn = await aiosqlite.connect(tmp_path / "fence.db", isolation_level=None)
    try:
        await conn.execute("CREATE TABLE t (x)")

        def count(raw: sqlite3.Connection, marker: str) -> tuple[str, int, int]:
            (rows,) = raw.execute("SELECT COUNT(*) FROM t").fetchone()
            return marker, rows, threading.get_ident()

        inserted = asyncio.ensure_future(conn.execute("INSERT INTO t VALUES (1)"))
        await asyncio.sleep(0)  # the insert is handed to the connection's thread first
        marker, rows, thread = await conn._execute(count, conn._conn, "after the insert")
        await inserted
        assert isinstance(conn._conn, sqlite3.Connection)
        assert (marker, rows) == ("after the insert", 1), "_execute no longer runs in order"
        assert thread != threading.get_ident(), "_execute ran fn on the event loop's thread"
    finally:
        await conn.close()


# --- simpleeval: filters._Evaluator overrides _check_disallowed_items with a no-op ---------


def test_simpleeval_check_disallowed_items_is_the_hook_switchd_overrides():
    check = getattr(simpleeval.SimpleEval, "_check_disallowed_items", None)
    assert check is not None, (
        "simpleeval.SimpleEval._check_disallowed_items is gone: filters._Evaluator overrides "
        "a method that no longer exists; review what simpleeval checks now and where"
    )
    assert list(inspect.signature(check).parameters) == ["self", "item"], (
        "simpleeval's _check_disallowed_items changed signature: review filters._Evaluator"
    )
    assert "self._check_disallowed_items(result)" in inspect.getsource(
        simpleeval.SimpleEval._eval
    ), "simpleeval no longer checks each node's result in _eval: review filters._Evaluator"
    assert "_check_disallowed_items" in vars(filters._Evaluator)  # the override is in place


class UpstreamChecked(filters._Evaluator):
    """switchd's evaluator with simpleeval's own result check left on."""

    def _check_disallowed_items(self, item: Any) -> None:
        super(filters._Evaluator, self)._check_disallowed_items(item)


SAFETY_CASES = sorted(
    {
        *HOSTILE,
        *REJECTED_AT_COMPILE,
        "data.__class__.__subclasses__()",
        'data.get("body").__class__',
        'getattr(data, "__class__")',
        "type(data)",
        "type(data).__mro__",
        '"{}".format(data)',
        'data["body"]["s"].format(data)',
        '"{0.__class__}".format_map(data)',
        "__import__('os').system('true')",
        "2 ** 10 ** 10",
        "len.__self__",
        "str.mro()",
    }
)


def verdict(evaluate: Any) -> str:
    """What an evaluation gives: "match", "no match", or the exception's class."""
    try:
        return "match" if evaluate() else "no match"
    except Exception as exc:
        return type(exc).__name__


@pytest.mark.parametrize("expression", SAFETY_CASES, ids=lambda e: e[:40])
def test_filter_safety_holds_with_simpleevals_own_check_on(expression: str):
    """Every safety case gives the same verdict with simpleeval's check on and off, and
    none matches through a filter. If an upstream security fix moves a check into
    _check_disallowed_items, switchd's no-op override would drop it: this fails first."""
    try:
        compiled = compile_filter(expression)
    except FilterError:
        compiled = None  # refused before simpleeval sees it
    if compiled is not None:
        ours = verdict(lambda: compiled._evaluate(filters._Evaluator(), sample()))
        upstream = verdict(lambda: compiled._evaluate(UpstreamChecked(), sample()))
        assert ours == upstream, f"simpleeval's own check says {upstream}, switchd's {ours}"
        assert ours != "match"
    try:  # and simpleeval alone, without switchd's compile-time checks
        tree = ast.parse(expression, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    raw = CompiledFilter(expression, Template(tree, reference=(), equalities=()))
    ours = verdict(lambda: raw._evaluate(filters._Evaluator(), sample()))
    upstream = verdict(lambda: raw._evaluate(UpstreamChecked(), sample()))
    assert ours == upstream, f"simpleeval's own check says {upstream}, switchd's {ours}"
