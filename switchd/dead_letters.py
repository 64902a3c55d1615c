"""The dead-letter store: deliveries that failed for good, kept for inspection and replay.

Whatever the queue backend, dead letters live in the switchd database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from switchd.db import Database, Statement
from switchd.models import Event, Job, Outcome
from switchd.pagination import newest_first, where_sql
from switchd.subscribers import Subscriber

if TYPE_CHECKING:
    from switchd.queue.base import JobQueue

INSERT_DEAD = (
    "INSERT INTO dead_letters (event_id, subscriber_id, topic, author, target_url, "
    "filter_expression, attempts, last_status, last_error, first_attempt_at, last_attempt_at, "
    "dead_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def bury(job: Job, outcome: Outcome) -> Statement:
    """The statement recording `job` as dead after `outcome` (run it in one transaction
    with the job's removal from its queue)."""
    return (
        INSERT_DEAD,
        (
            job.event_id,
            job.subscriber_id,
            job.topic,
            job.author,
            job.target_url,
            job.filter_expression,
            job.attempts + outcome.requests,
            outcome.status,
            outcome.error,
            job.first_attempt_at or outcome.finished_at,
            outcome.finished_at,
            time.time(),
            orjson.dumps(job.payload),
        ),
    )


DEAD_COLUMNS = (
    "id, event_id, subscriber_id, topic, author, target_url, filter_expression, attempts, "
    "last_status, last_error, first_attempt_at, last_attempt_at, dead_at, replayed_at"
)


@dataclass(frozen=True)
class DeadFilter:
    """Which dead letters an operation applies to; empty means all."""

    subscriber_id: str | None = None
    topic: str | None = None
    event_id: str | None = None
    replayed: bool | None = None
    ids: tuple[int, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A SQL WHERE clause (with leading ' WHERE ' when not empty) and its parameters."""
        clauses, params = self.conditions()
        return where_sql(clauses), params

    def conditions(self) -> tuple[list[str], list[Any]]:
        """The SQL conditions (to be joined with AND) and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("subscriber_id", "topic", "event_id"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.replayed is not None:
            clauses.append("replayed_at IS NOT NULL" if self.replayed else "replayed_at IS NULL")
        if self.ids:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})")
            params.extend(self.ids)
        return clauses, params


class DeadLetterStore:
    """Reading, marking and deleting dead letters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self, where: DeadFilter, limit: int = 50, before: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; returns the records and the cursor for the next page (or None)."""
        select = f"SELECT {DEAD_COLUMNS} FROM dead_letters"
        return await newest_first(self.db, select, where.conditions(), "id", limit, before)

    async def get(self, dead_id: int) -> dict[str, Any] | None:
        """One dead letter with its payload, or None."""
        row = await self.db.fetchone(
            f"SELECT {DEAD_COLUMNS}, payload FROM dead_letters WHERE id = ?", (dead_id,)
        )
        if row is None:
            return None
        record = dict(row)
        record["payload"] = orjson.loads(record["payload"])
        return record

    async def with_payloads(self, where: DeadFilter) -> list[dict[str, Any]]:
        """Every matching dead letter, payload included, oldest first."""
        sql, params = where.where()
        rows = await self.db.fetchall(
            f"SELECT {DEAD_COLUMNS}, payload FROM dead_letters{sql} ORDER BY id", params
        )
        return [{**dict(row), "payload": orjson.loads(row["payload"])} for row in rows]

    async def mark_replayed(self, ids: list[int]) -> None:
        """Record that these dead letters were replayed now."""
        now = time.time()
        await self.db.write(
            [("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", (now, i)) for i in ids]
        )

    async def delete(self, where: DeadFilter) -> int:
        """Delete matching dead letters; return how many."""
        sql, params = where.where()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(f"DELETE FROM dead_letters{sql}", params)
            return cursor.rowcount


class ReplayRefused(Exception):
    """A dead letter cannot be replayed (its subscriber is gone or disabled)."""


async def replay(
    store: DeadLetterStore,
    queue: JobQueue,
    subscribers: Callable[[str | None], Subscriber | None],
    records: list[dict[str, Any]],
    strict: bool = False,
) -> int:
    """Enqueue a fresh delivery of each record (same event id) and mark it replayed.

    Records whose subscriber was deleted or is disabled cannot be replayed: they are
    skipped, or with `strict` the first one raises ReplayRefused before anything is
    enqueued. Returns how many were replayed.
    """
    replayable: list[tuple[dict[str, Any], Subscriber]] = []
    for record in records:
        subscriber = subscribers(record["subscriber_id"])
        problem = _replay_problem(record, subscriber)
        if problem and strict:
            raise ReplayRefused(problem)
        if subscriber is not None and not problem:
            replayable.append((record, subscriber))
    replayed: list[int] = []
    for record, subscriber in replayable:
        await queue.enqueue(_event(record), [subscriber])
        replayed.append(record["id"])
    if replayed:
        await store.mark_replayed(replayed)
    return len(replayed)


def _replay_problem(record: dict[str, Any], subscriber: Subscriber | None) -> str | None:
    if subscriber is None:
        return f"subscriber {record['subscriber_id']!r} no longer exists"
    if not subscriber.enabled:
        return f"subscriber {subscriber.id!r} is disabled; enable it before replaying"
    return None


def _event(record: dict[str, Any]) -> Event:
    return Event(
        id=record["event_id"],
        topic=record["topic"],
        author=record["author"],
        payload=record["payload"],
        payload_json=orjson.dumps(record["payload"]),
        received_at=time.time(),
    )
