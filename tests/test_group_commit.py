"""Group commit: the writer's thread commits queued writes back to back, and a caller of
`transaction()` still gets its turn while writes keep coming."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchd import db as db_module
from switchd.db import Database

PER_HANDOFF = 4
WRITES = 3 * PER_HANDOFF


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(str(tmp_path / "switch.db"))
    await database.open()
    yield database
    await database.close()


async def test_a_transaction_gets_its_turn_while_writes_keep_coming(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(db_module, "COMMITS_PER_HANDOFF", PER_HANDOFF)
    gates = [threading.Event() for _ in range(WRITES)]
    finished: list[str] = []

    def held(i: int):  # runs in write i's group commit, until its gate opens
        def work(conn: sqlite3.Connection) -> int:
            gates[i].wait(10)
            return i

        return work

    async def write(i: int) -> None:
        assert await db.run_in_commit(held(i)) == i
        finished.append(f"write {i}")

    async def transaction() -> None:
        async with db.transaction(durable=False) as conn:
            await conn.execute("INSERT INTO meta VALUES ('transaction', 1)")
        finished.append("transaction")

    writes = [asyncio.create_task(write(0))]
    try:
        await asyncio.sleep(0.05)  # write 0's commit is under way on the writer's thread
        waiting = asyncio.create_task(transaction())
        for i in range(1, WRITES):
            writes.append(asyncio.create_task(write(i)))
            await asyncio.sleep(0.01)  # write i is queued while write i - 1 commits
            gates[i - 1].set()
            await asyncio.sleep(0.01)
        gates[-1].set()
        await asyncio.wait_for(asyncio.gather(waiting, *writes), 10)
    finally:
        for gate in gates:
            gate.set()
    # Each write had its own commit, one after another; the transaction came in between.
    assert finished.index("transaction") <= PER_HANDOFF
    assert [f for f in finished if f != "transaction"] == [f"write {i}" for i in range(WRITES)]


ROWS = [  # the last column holds blobs (or NULL)
    (2**62, -1, True, None, b'{"k": "\xc3\xa9"}'),
    (1.5e300, 0.1, 1764255731.123456, -0.0, b""),
    ('é \u2028 "q" \\ \x01', "", "[1]", "null", None),
    (5e-324, None, "x" * 1000, 7, b"\x01"),
]
INSERT = "INSERT INTO {} (a, b, c, d, e) VALUES (?, ?, ?, ?, ?)"
READ = "SELECT a, b, c, d, e, typeof(a), typeof(b), typeof(c), typeof(d), typeof(e) FROM {}"


async def write_both_ways(db: Database, rows: list[tuple]) -> list[str]:
    """Write `rows` in one group commit and row by row; the SQL the batch ran."""
    traced: list[str] = []
    async with db.transaction() as conn:
        for table in ("batched", "single"):
            await conn.execute(f"CREATE TABLE {table} (n INTEGER PRIMARY KEY, a, b, c, d, e)")
    await conn.set_trace_callback(traced.append)
    await asyncio.gather(*(db.write([(INSERT.format("batched"), row)]) for row in rows))
    await conn.set_trace_callback(None)
    for row in rows:
        await db.write([(INSERT.format("single"), row)])
    batched = [tuple(r) for r in await db.fetchall(READ.format("batched") + " ORDER BY n")]
    single = [tuple(r) for r in await db.fetchall(READ.format("single") + " ORDER BY n")]
    assert batched == single
    assert [r[:5] for r in batched] == rows
    return [sql for sql in traced if "batched" in sql]


async def test_rows_written_in_one_statement_are_stored_as_row_by_row(db: Database):
    executed = await write_both_ways(db, ROWS)
    assert len(executed) == 1 and "json_each" in executed[0]  # one statement for all


@pytest.mark.parametrize(
    "rows",
    [
        [(1, 2, 3, 4, b"\xff\xfe"), (1, 2, 3, 4, b"ok")],  # bytes that are not UTF-8
        [(1, 2, 3, 4, b"blob"), (1, 2, 3, 4, "text")],  # a column of blobs and text
        [(1, 2, 3, "a\x00b", b"a\x00b"), (1, 2, 3, 4, b"ok")],  # NUL characters
    ],
)
async def test_rows_json_cannot_carry_are_written_row_by_row(db: Database, rows: list[tuple]):
    assert len(await write_both_ways(db, rows)) == 2


async def test_statements_with_placeholders_beyond_the_values_row_run_row_by_row(db: Database):
    upsert = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?"
    rows = [("a", 1, 10), ("b", 2, 20), ("a", 3, 30)]
    await asyncio.gather(*(db.write([(upsert, row)]) for row in rows))
    stored = await db.fetchall("SELECT key, value FROM meta WHERE key IN ('a', 'b')")
    assert sorted(tuple(r) for r in stored) == [("a", 30), ("b", 2)]


async def test_a_malformed_write_fails_its_commit_and_the_next_one_works(db: Database):
    good = ("INSERT INTO meta VALUES ('good', 1)", ())
    malformed = ("INSERT INTO meta VALUES (?, ?)",)  # no parameters
    results = await asyncio.wait_for(
        asyncio.gather(db.write([good]), db.write([malformed]), return_exceptions=True), 5
    )
    assert all(isinstance(r, ValueError) for r in results), results
    await db.write([good])
    assert await db.fetchall("SELECT key FROM meta WHERE key = 'good'")
