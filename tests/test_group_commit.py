"""Group commit: the writer's thread commits queued writes back to back, and a caller of
`transaction()` still gets its turn while writes keep coming."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from switchd import db as db_module
from switchd.db import Database

PER_HANDOFF = 4
WRITES = 3 * PER_HANDOFF


async def test_a_transaction_gets_its_turn_while_writes_keep_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(db_module, "COMMITS_PER_HANDOFF", PER_HANDOFF)
    db = Database(str(tmp_path / "busy.db"))
    await db.open()
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
        await db.close()
    # Each write had its own commit, one after another; the transaction came in between.
    assert finished.index("transaction") <= PER_HANDOFF
    assert [f for f in finished if f != "transaction"] == [f"write {i}" for i in range(WRITES)]
