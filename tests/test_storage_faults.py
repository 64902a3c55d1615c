"""The database stops taking writes: /publish and /readyz answer 503, nothing is
half-stored, and both recover by themselves once the fault is gone."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchd import db as db_module
from switchd.db import Database
from tests.conftest import Running, Sink, StartSwitchd


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, so "disk full" is the kernel's ENOSPC (needs root and mount)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


async def assert_unavailable(app: Running, reason: str) -> None:
    status, body = await app.publish("t", {"body": {"x": 1}})
    assert status == 503 and body["error"]["code"] == "queue_unavailable", body
    status, ready = await app.call("GET", "/readyz")
    assert status == 503 and any(reason in r for r in ready["reasons"]), ready
    assert (await app.call("GET", "/healthz"))[0] == 200


async def assert_recovered(app: Running, sink: Sink, deliveries: int) -> None:
    for _ in range(50):
        status, _ = await app.call("GET", "/readyz")
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    status, body = await app.publish("t", {"body": {"after": True}})
    assert status == 202, body
    requests = await sink.wait_for(deliveries)
    assert requests[-1].json() == {"after": True}


def stored_events(db_path: Path) -> list[str]:
    """The bodies of stored events: only accepted (202) publishes may be there."""
    with sqlite3.connect(db_path) as conn:
        return [row[0] for row in conn.execute("SELECT payload FROM events ORDER BY received_at")]


async def test_disk_full_then_space_freed(
    start_switchd: StartSwitchd, sink: Sink, small_disk: Path
):
    app = await start_switchd(db_name=str(small_disk / "switch.db"))
    await app.add_subscriber(topic="t", target_url=sink.url())
    status, _ = await app.publish("t", {"body": {"before": True}})
    assert status == 202

    filler = small_disk / "filler"
    with filler.open("wb") as out:  # fill the disk to the last byte
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    big = {"body": {"blob": "x" * 200_000}}
    status, body = await app.publish("t", big)
    assert status == 503 and body["error"]["code"] == "queue_unavailable", body
    await assert_unavailable(app, "not writable")

    filler.unlink()
    await assert_recovered(app, sink, deliveries=2)
    assert stored_events(small_disk / "switch.db") == [
        b'{"body":{"before":true}}',
        b'{"body":{"after":true}}',
    ]


async def test_read_only_database_then_writable_again(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url())
    writer = app.service.db._writer
    assert writer is not None
    # SQLite's own read-only switch on the connection: every write fails with SQLITE_READONLY,
    # as for a file opened read-only (a root test process cannot make a file unwritable).
    await writer.execute("PRAGMA query_only = ON")
    await assert_unavailable(app, "readonly")
    await writer.execute("PRAGMA query_only = OFF")
    await assert_recovered(app, sink, deliveries=1)
    assert stored_events(Path(app.service.settings.db_name)) == [b'{"body":{"after":true}}']


async def test_locked_beyond_busy_timeout(start_switchd: StartSwitchd, sink: Sink, monkeypatch):
    monkeypatch.setattr("switchd.db.BUSY_TIMEOUT_MS", 200)
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url())
    locker = sqlite3.connect(app.service.settings.db_name, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        await assert_unavailable(app, "locked")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await assert_recovered(app, sink, deliveries=1)


async def test_durable_writes_commit_with_full_sync_bookkeeping_with_normal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A publish's commit waits for the disk (FULL) even right after bookkeeping commits
    (NORMAL), and a group commit mixing both is durable. Bookkeeping stays FULL while
    durable commits are recent (no switching back and forth under publish load)."""
    db = Database(str(tmp_path / "sync.db"))
    await db.open()
    committed: list[str] = []
    writer = db._writer
    assert writer is not None
    await writer.set_trace_callback(committed.append)

    def levels() -> list[str]:  # the synchronous level in force at each COMMIT
        level, seen = "FULL", []
        for sql in committed:
            if sql.startswith("PRAGMA synchronous="):
                level = sql.removeprefix("PRAGMA synchronous=")
            elif sql == "COMMIT":
                seen.append(level)
        return seen

    row = ("INSERT OR REPLACE INTO meta VALUES ('k', 1)", ())
    try:
        await db.write([row], durable=False)
        await db.write([row])
        async with db.transaction(durable=False):
            pass
        await asyncio.gather(db.write([row], durable=False), db.write([row]))
        assert levels() == ["NORMAL", "FULL", "FULL", "FULL"]
        monkeypatch.setattr(db_module, "STAY_FULL_SECONDS", 0.0)  # no publish for a while
        await db.write([row], durable=False)
        async with db.transaction(durable=False):
            pass
        await db.write([row])
        assert levels()[4:] == ["NORMAL", "NORMAL", "FULL"]
    finally:
        await db.close()


async def test_checkpoints_run_off_the_commit_path(tmp_path: Path):
    """With background checkpoints, COMMITs never checkpoint (the log grows), and after
    `checkpoint()` the next writes reuse the log from its start (it stops growing)."""
    db = Database(str(tmp_path / "wal.db"))
    await db.open()
    await db.checkpoint_in_background()
    wal = str(tmp_path / "wal.db") + "-wal"

    async def write_rows(prefix: str) -> int:
        for start in range(0, 2000, 20):
            keys = [(f"{prefix}{start + i}" * 400,) for i in range(20)]
            await db.write([("INSERT OR REPLACE INTO meta VALUES (?, 1)", k) for k in keys])
        return await asyncio.to_thread(os.path.getsize, wal)

    try:
        first = await write_rows("a")
        second = await write_rows("b")
        assert second > first  # no checkpoint inside the commits: the log only grew
        await db.checkpoint()
        third = await write_rows("c")
        assert third <= second  # checkpointed: the log was reused from its start
    finally:
        await db.close()
