"""The SQLite database: schema, connections, and group-committed writes.

One connection writes (all writes of this process are serialised by an asyncio lock, in
`BEGIN IMMEDIATE` transactions), another reads. SQLite work runs on aiosqlite's threads,
never on the event loop.

Durability: a write that a promise rests on (a publish's 202, a subscriber change) is
committed with `synchronous=FULL`, so its COMMIT waits for the disk. Bookkeeping whose
loss at a power cut only means a job is delivered once more (leases, acks, retries, the
delivery log) is committed with `synchronous=NORMAL`: safe from a process crash, and
made durable by the next FULL commit, which syncs the whole write-ahead log. While
publishes keep coming (a FULL commit in the last STAY_FULL_SECONDS), bookkeeping commits
with FULL too: switching the setting back and forth costs more than the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import aiosqlite
import orjson

BUSY_TIMEOUT_MS = 5000
# A statement's VALUES clause with one row of placeholders: a batch of such rows is run as
# one statement reading them from a JSON array (see _execute_groups).
ROW_OF_PLACEHOLDERS = re.compile(r"VALUES\s*\((\?(?:\s*,\s*\?)*)\)")
NUL = b"\\u0000"  # how JSON escapes the character
CACHED_STATEMENTS = 512  # prepared statements kept per connection
STAY_FULL_SECONDS = 1.0
COMMITS_PER_HANDOFF = 16  # group commits the writer's thread runs before transaction() gets a turn
T = TypeVar("T")
Statement = tuple[str, Sequence[Any]]

MIGRATIONS: list[str] = [
    """
    CREATE TABLE subscribers (
        id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        target_url TEXT NOT NULL,
        filter_expression TEXT NOT NULL DEFAULT 'True',
        enabled INTEGER NOT NULL DEFAULT 1,
        disabled_reason TEXT,
        secret TEXT,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX subscribers_topic ON subscribers(topic);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta VALUES ('subscribers_version', 0);
    CREATE TRIGGER subscribers_ins AFTER INSERT ON subscribers BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'subscribers_version'; END;
    CREATE TRIGGER subscribers_upd AFTER UPDATE ON subscribers BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'subscribers_version'; END;
    CREATE TRIGGER subscribers_del AFTER DELETE ON subscribers BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'subscribers_version'; END;
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        author TEXT NOT NULL,
        received_at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE INDEX events_received ON events(received_at);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        subscriber_id TEXT,
        topic TEXT NOT NULL,
        author TEXT NOT NULL,
        target_url TEXT NOT NULL,
        filter_expression TEXT NOT NULL,
        run_at REAL NOT NULL,
        lease INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        rounds INTEGER NOT NULL DEFAULT 0,
        first_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT
    );
    CREATE INDEX jobs_run_at ON jobs(run_at);
    CREATE INDEX jobs_event ON jobs(event_id);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        subscriber_id TEXT,
        topic TEXT NOT NULL,
        author TEXT NOT NULL,
        target_url TEXT NOT NULL,
        filter_expression TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        first_attempt_at REAL,
        last_attempt_at REAL,
        dead_at REAL NOT NULL,
        replayed_at REAL,
        payload BLOB NOT NULL
    );
    CREATE INDEX dead_event ON dead_letters(event_id);
    CREATE INDEX dead_subscriber ON dead_letters(subscriber_id);
    CREATE INDEX dead_topic ON dead_letters(topic);
    """,
    """
    CREATE TABLE idempotency_keys (
        author TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (author, key)
    );
    CREATE INDEX idempotency_created ON idempotency_keys(created_at);
    """,
    # The delivery log: every accepted event (also unmatched ones) and every attempt.
    """
    ALTER TABLE events ADD COLUMN payload_size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN matched TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE events ADD COLUMN test INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET payload_size = length(payload), matched = (
        SELECT json_group_array(subscriber_id) FROM (
            SELECT subscriber_id FROM jobs
            WHERE event_id = events.id AND subscriber_id IS NOT NULL
            UNION SELECT subscriber_id FROM dead_letters
            WHERE event_id = events.id AND subscriber_id IS NOT NULL));
    CREATE INDEX events_topic ON events(topic);
    CREATE INDEX events_author ON events(author);
    CREATE INDEX events_payload_kept ON events(received_at) WHERE length(payload) > 0;
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        subscriber_id TEXT,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        error TEXT,
        next_retry_at REAL
    );
    CREATE INDEX attempts_event ON attempts(event_id, subscriber_id, outcome);
    CREATE INDEX attempts_subscriber ON attempts(subscriber_id, at);
    CREATE INDEX attempts_failed ON attempts(subscriber_id, at) WHERE outcome != 'delivered';
    CREATE INDEX attempts_at ON attempts(at);
    """,
    """
    CREATE INDEX dead_at ON dead_letters(dead_at);
    """,
    # A key is pending while its event's jobs are pushed to Faktory (idempotency.py).
    """
    ALTER TABLE idempotency_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
    """,
    # The subscriber change log: every writer's change (the CLI's too, old ones included)
    # gets a version, so a process applies only what changed since the version it applied.
    """
    CREATE TABLE subscriber_changes (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        subscriber_id TEXT NOT NULL,
        at REAL NOT NULL
    );
    INSERT INTO meta VALUES ('subscriber_changes_pruned', 0);
    CREATE TRIGGER subscriber_changes_ins AFTER INSERT ON subscribers BEGIN
        INSERT INTO subscriber_changes (subscriber_id, at)
        VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0); END;
    CREATE TRIGGER subscriber_changes_upd AFTER UPDATE ON subscribers BEGIN
        INSERT INTO subscriber_changes (subscriber_id, at)
        SELECT OLD.id, (julianday('now') - 2440587.5) * 86400.0 WHERE OLD.id IS NOT NEW.id;
        INSERT INTO subscriber_changes (subscriber_id, at)
        VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0); END;
    CREATE TRIGGER subscriber_changes_del AFTER DELETE ON subscribers BEGIN
        INSERT INTO subscriber_changes (subscriber_id, at)
        VALUES (OLD.id, (julianday('now') - 2440587.5) * 86400.0); END;
    CREATE INDEX subscribers_created ON subscribers(created_at, id);
    """,
]


@dataclass
class _Queued:
    """A write waiting for a group commit: statements, or a function run after them."""

    statements: list[Statement]
    work: Callable[[sqlite3.Connection], Any] | None
    durable: bool
    future: asyncio.Future[Any]


class Database:
    """Connections to one SQLite file, with group commit for writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # Writes waiting for a group commit. The writer's thread takes them (deque operations
        # are atomic), so it can start the next commit without a round trip to the loop.
        self._queue: deque[_Queued] = deque()
        self._synchronous: str | None = "FULL"  # the writer's setting; None: unknown
        self._last_full = float("-inf")  # time.monotonic() of the last durable transaction
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # group commits so far
        self.committed_writes = 0  # write() calls they carried
        self.last_commit = 0.0  # time.monotonic() of the last group commit
        self.write_error: str | None = None  # why the last group commit failed, if it did

    async def open(self) -> None:
        """Open both connections (WAL, full sync) and apply pending migrations."""
        self._writer = await _connect(self.path)
        await self._writer.execute("PRAGMA journal_mode=WAL")
        await self._migrate(self._writer)
        self._reader = await _connect(self.path)

    async def checkpoint_in_background(self) -> None:
        """From now on `checkpoint()` (called periodically) copies the write-ahead log into
        the database on a connection of its own, so no COMMIT pays for a checkpoint."""
        self._checkpointer = await _connect(self.path)
        await self._require(self._writer).execute("PRAGMA wal_autocheckpoint=0")

    async def checkpoint(self) -> None:
        """A passive checkpoint: copies what it can without waiting for readers or writers."""
        await self._require(self._checkpointer).execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        """Finish queued writes, then close the connections."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        for conn in (self._checkpointer, self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._checkpointer = self._reader = self._writer = None

    @asynccontextmanager
    async def transaction(self, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction of its own (BEGIN IMMEDIATE … COMMIT, rollback on error);
        `durable=False` for bookkeeping a power cut may undo (see the module's doc)."""
        writer = self._require(self._writer)
        async with self._lock:
            try:
                await self._set_synchronous(writer, self._level(durable))
                await writer.execute("BEGIN IMMEDIATE")
                yield writer
                await writer.execute("COMMIT")  # may fail too (disk full): then roll back
            except BaseException:
                # Also when cancelled: statements already handed to aiosqlite still run, in
                # order, so a ROLLBACK queued now ends whatever transaction they opened.
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer.execute("ROLLBACK"))
                raise

    def _level(self, durable: bool) -> str:
        """The synchronous level for the next transaction (see the module's doc); a
        durable one is remembered as the latest FULL commit."""
        now = time.monotonic()
        if durable:
            self._last_full = now
            return "FULL"
        recent = now - self._last_full < STAY_FULL_SECONDS
        return "FULL" if recent and self._synchronous == "FULL" else "NORMAL"

    async def _set_synchronous(self, writer: aiosqlite.Connection, level: str) -> None:
        if level != self._synchronous:
            self._synchronous = None  # until the pragma is known to have run (cancellation)
            await writer.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    async def write(self, statements: list[Statement], durable: bool = True) -> None:
        """Run statements; concurrent callers share one transaction and one fsync.

        The shared commit is durable when any of its writes asks to be. Statements of one
        batch may be reordered (grouped by SQL text), so callers must only submit
        statements whose effect does not depend on each other's order.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued(statements, None, durable, future))
        await future  # the flush goes on if this caller is cancelled: it is a task of its own

    async def run_in_commit(
        self, work: Callable[[sqlite3.Connection], T], durable: bool = False
    ) -> T:
        """Run `work(connection)` on the writer's thread in the next group commit, after
        its statements (so it sees their rows), and return its result. Leases use it: a
        lease then costs no transaction of its own, and publishes never queue behind one."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued([], work, durable, future))
        return await future

    def _enqueue(self, queued: _Queued) -> None:
        self._queue.append(queued)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Group commits while writes are queued: on the writer's thread, commit after
        commit (a few per hand-off, so that `transaction()` callers get their turn)."""
        loop = asyncio.get_running_loop()
        while self._queue:
            try:
                writer = self._require(self._writer)
                async with self._lock:
                    # aiosqlite's private queue to its connection's thread (no public API runs
                    # a function taking the connection), ordered with every call on it; fenced:
                    # aiosqlite <0.23 in pyproject.toml, tests/test_private_apis.py.
                    await writer._execute(self._commit_queued, writer._conn, loop)
            except Exception as exc:  # no connection to write on: fail what is queued
                batch = [self._queue.popleft() for _ in range(len(self._queue))]
                self._answer(batch, [exc] * len(batch), exc)

    def _commit_queued(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer's thread: up to COMMITS_PER_HANDOFF group commits of the queued
        writes, each answered (on the loop) as soon as its COMMIT returns."""
        for _ in range(COMMITS_PER_HANDOFF):
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if not batch:
                return
            level = self._level(any(queued.durable for queued in batch))
            pragma = None if level == self._synchronous else f"PRAGMA synchronous={level}"
            if pragma:
                self._synchronous = None  # until the pragma is known to have run
            works = [queued.work for queued in batch if queued.work is not None]
            try:
                groups = _grouped(s for queued in batch for s in queued.statements)
                results = iter(_transact(conn, partial(_execute_batch, groups, works), pragma))
            except Exception as exc:  # every caller of this commit learns why it failed
                loop.call_soon_threadsafe(self._answer, batch, [exc] * len(batch), exc)
                continue
            self._synchronous = level
            outcomes = [None if queued.work is None else next(results) for queued in batch]
            loop.call_soon_threadsafe(self._answer, batch, outcomes, None)

    def _answer(self, batch: list[_Queued], outcomes: list[Any], error: Exception | None) -> None:
        """On the loop: record a group commit and resolve its callers' futures."""
        if error is None:
            self.write_error = None
            self.last_commit = time.monotonic()
            self.commits += 1
            self.committed_writes += sum(1 for queued in batch if queued.work is None)
        else:
            self.write_error = f"{type(error).__name__}: {error}"
        for queued, outcome in zip(batch, outcomes, strict=True):
            if queued.future.done():
                continue
            if isinstance(outcome, Exception):
                queued.future.set_exception(outcome)
            else:
                queued.future.set_result(outcome)

    async def check_writable(self, quiet_seconds: float, timeout: float) -> str | None:
        """None when the database takes writes: trusted from recent commits, else probed."""
        recent = time.monotonic() - self.last_commit < quiet_seconds
        if recent and self.write_error is None:
            return None
        try:
            probe = ("INSERT OR REPLACE INTO meta VALUES ('write_probe', ?)", (int(time.time()),))
            await asyncio.wait_for(self.write([probe]), timeout)
        except Exception as exc:
            return f"database not writable: {exc or type(exc).__name__}"
        return None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Read committed rows on the reader connection."""
        return list(await self._require(self._reader).execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        """The first row of a read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @staticmethod
    def _require(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise RuntimeError("database is not open")
        return conn

    @staticmethod
    async def _migrate(conn: aiosqlite.Connection) -> None:
        for number, script in enumerate(MIGRATIONS, start=1):
            if await _user_version(conn) >= number:
                continue
            try:
                await conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
                )
            except sqlite3.OperationalError:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                if await _user_version(conn) < number:  # not a concurrent migration
                    raise


async def _user_version(conn: aiosqlite.Connection) -> int:
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    return int(row[0]) if row else 0


async def _connect(path: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, cached_statements=CACHED_STATEMENTS)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA synchronous=FULL")
    return conn


def _transact(
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], pragma: str | None
) -> T:
    """On the writer's thread: [pragma], BEGIN IMMEDIATE, work, COMMIT or ROLLBACK."""
    if pragma:
        conn.execute(pragma)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _execute_batch(
    groups: list[tuple[str, list[Sequence[Any]]]],
    works: list[Callable[[sqlite3.Connection], Any]],
    conn: sqlite3.Connection,
) -> list[Any]:
    """A group commit's work: its statements, then its functions; their results."""
    _execute_groups(groups, conn)
    return [work(conn) for work in works]


def execute_rows(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    """On the writer's thread: run a `VALUES (?, …)` statement for many rows at once."""
    _execute_groups([(sql, rows)], conn)


def _execute_groups(
    groups: list[tuple[str, list[Sequence[Any]]]], conn: sqlite3.Connection
) -> None:
    """Each group's rows: a statement with one `VALUES (?, …)` row runs once for all its rows,
    which it reads from a JSON array. Each SQLite call gives the GIL up and must take it back
    from the busy event loop, which costs far more than the call itself, so one call per
    row (executemany) is what made group commits slow."""
    for sql, rows in groups:
        blobs = _blob_columns(rows) if len(rows) > 1 and _values_row_width(sql) else None
        if blobs is not None:
            try:
                array = orjson.dumps(rows, default=_utf8)
            except orjson.JSONEncodeError:
                array = NUL  # not representable in JSON: row by row
            if NUL not in array:  # SQLite's JSON strings end at their first NUL
                conn.execute(_from_json_rows(sql, blobs), (array,))
                continue
        conn.executemany(sql, rows)


def _blob_columns(rows: list[Sequence[Any]]) -> frozenset[int] | None:
    """The columns holding bytes, or None when one also holds other values than NULL (the
    JSON text cannot tell a blob from a string there)."""
    blobs = frozenset(i for row in rows for i, value in enumerate(row) if type(value) is bytes)
    for row in rows:
        if any(row[i] is not None and type(row[i]) is not bytes for i in blobs):
            return None
    return blobs


def _utf8(value: object) -> str:
    if type(value) is bytes:
        return value.decode()  # a blob column's text (bytes that are not UTF-8 go row by row)
    raise TypeError


@functools.lru_cache(maxsize=64)
def _values_row_width(sql: str) -> int:
    """The placeholders of the statement's `VALUES (?, …)` row; 0 without such a row or
    with placeholders elsewhere too (its parameters are then not just the row's)."""
    match = ROW_OF_PLACEHOLDERS.search(sql)
    width = match.group(1).count("?") if match else 0
    return width if sql.count("?") == width else 0


@functools.lru_cache(maxsize=64)
def _from_json_rows(sql: str, blobs: frozenset[int]) -> str:
    """`sql` with its VALUES row replaced by the rows of a JSON array parameter; columns in
    `blobs` are cast back to BLOB. The WHERE lets an INSERT keep its ON CONFLICT clause."""
    match = ROW_OF_PLACEHOLDERS.search(sql)
    assert match is not None
    columns = []
    for i in range(_values_row_width(sql)):
        value = f"CAST(value->>{i} AS BLOB)" if i in blobs else f"value->>{i}"
        columns.append(f"{value} AS column{i + 1}")
    rows = f"SELECT {', '.join(columns)} FROM json_each(?) WHERE true"
    return sql[: match.start()] + rows + sql[match.end() :]


def _grouped(statements: Iterable[Statement]) -> list[tuple[str, list[Sequence[Any]]]]:
    groups: dict[str, list[Sequence[Any]]] = {}
    for sql, params in statements:
        groups.setdefault(sql, []).append(params)
    return list(groups.items())
