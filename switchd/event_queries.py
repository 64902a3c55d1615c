"""The delivery log, reading side: event listings, one event's fate, subscriber stats.

The state of an event for one matched subscriber comes from what the log and the queue
hold, in this order: `delivered` (an attempt succeeded), `dead` (a dead letter not
replayed), `skipped` (the subscriber was deleted before a delivery), `failed` (attempts
failed and none succeeded yet: a retry is due, or a replay, or it was a test), `pending`
(not attempted yet). An event's status is the worst of its subscribers' states (dead >
failed > pending > delivered > skipped), or `unmatched` when it matched nobody. The
same SQL expression serves the listing filter and the single-event view, so they agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from switchd.db import Database
from switchd.pagination import newest_first

STATES = ("skipped", "delivered", "pending", "failed", "dead")  # by rank: worst last
UNMATCHED = "unmatched"
STATUSES = ("delivered", "failed", "pending", "dead", UNMATCHED, "skipped")
WINDOWS = {"last_hour": 3600.0, "last_day": 86400.0}
PERCENTILES = {"p50_ms": 0.50, "p99_ms": 0.99}


def _state_rank(event: str, subscriber: str) -> str:
    """SQL: the rank in STATES of `event`'s state for `subscriber` (SQL expressions)."""
    attempts = f"attempts a WHERE a.event_id = {event} AND a.subscriber_id = {subscriber}"
    return f"""CASE
        WHEN EXISTS (SELECT 1 FROM {attempts} AND a.outcome = 'delivered') THEN 1
        WHEN EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = {event}
            AND d.subscriber_id = {subscriber} AND d.replayed_at IS NULL) THEN 4
        WHEN NOT EXISTS (SELECT 1 FROM subscribers s WHERE s.id = {subscriber}) THEN 0
        WHEN EXISTS (SELECT 1 FROM {attempts}) THEN 3
        ELSE 2 END"""


STATE_RANK = _state_rank("e.id", "m.value")
EVENT_RANK = f"(SELECT MAX({STATE_RANK}) FROM json_each(e.matched) m)"  # NULL: unmatched
# Cheap necessary conditions (driven by an index) checked before the rank of each event.
NARROWER = {
    "dead": "e.id IN (SELECT event_id FROM dead_letters WHERE replayed_at IS NULL)",
    "failed": "e.id IN (SELECT event_id FROM attempts WHERE outcome != 'delivered')",
}
EVENT_COLUMNS = "e.id, e.topic, e.author, e.received_at, e.payload_size, e.matched, e.test"
LIST_EVENTS = f"SELECT e.rowid AS seq, {EVENT_COLUMNS}, {EVENT_RANK} AS rank FROM events e"
GET_EVENT = f"SELECT {EVENT_COLUMNS}, e.payload FROM events e WHERE e.id = ?"
SUBSCRIBER_STATES = f"""SELECT m.value AS subscriber_id, {STATE_RANK} AS rank,
    (SELECT MAX(d.id) FROM dead_letters d WHERE d.event_id = e.id
        AND d.subscriber_id = m.value AND d.replayed_at IS NULL) AS dead_letter_id
    FROM events e, json_each(e.matched) m WHERE e.id = ?"""
ATTEMPT_COLUMNS = "attempt, at, duration_ms, status, outcome, error, next_retry_at"
EVENT_ATTEMPTS = (
    f"SELECT subscriber_id, {ATTEMPT_COLUMNS} FROM attempts WHERE event_id = ? ORDER BY id"
)
WINDOW_COUNTS = (
    "SELECT COUNT(*) AS attempts, COALESCE(SUM(outcome = 'delivered'), 0) AS delivered "
    "FROM attempts WHERE subscriber_id = ? AND at >= ?"
)
WINDOW_RANKS = (
    "SELECT rank, duration_ms FROM (SELECT duration_ms, "
    "ROW_NUMBER() OVER (ORDER BY duration_ms) AS rank FROM attempts "
    "WHERE subscriber_id = ? AND at >= ?) WHERE rank IN ({marks})"
)
LAST_ERROR = (
    "SELECT at, event_id, attempt, status, outcome, error FROM attempts "
    "WHERE subscriber_id = ? AND outcome != 'delivered' ORDER BY at DESC LIMIT 1"
)


@dataclass(frozen=True)
class EventFilter:
    """Which events a listing shows; empty means all."""

    topic: str | None = None
    author: str | None = None
    status: str | None = None  # one of STATUSES
    since: float | None = None  # received at or after
    until: float | None = None  # received before

    def conditions(self) -> tuple[list[str], list[Any]]:
        """The SQL conditions (to be joined with AND) and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("e.topic = ?", self.topic),
            ("e.author = ?", self.author),
            ("e.received_at >= ?", self.since),
            ("e.received_at < ?", self.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if self.status == UNMATCHED:
            clauses.append("e.matched = '[]'")
        elif self.status is not None:
            if self.status in NARROWER:
                clauses.append(NARROWER[self.status])
            clauses.append(f"{EVENT_RANK} = ?")
            params.append(STATES.index(self.status))
        return clauses, params


def _status(rank: int | None) -> str:
    return UNMATCHED if rank is None else STATES[rank]


def _event(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "topic": row["topic"],
        "author": row["author"],
        "received_at": row["received_at"],
        "payload_size": row["payload_size"],
        "matched": orjson.loads(row["matched"]),
        "test": bool(row["test"]),
    }


class EventQueries:
    """Reads of the delivery log."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self, where: EventFilter, limit: int, before: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first (in the order logged); the events and the next page's cursor."""
        rows, cursor = await newest_first(
            self.db, LIST_EVENTS, where.conditions(), "e.rowid", limit, before, column="seq"
        )
        return [{**_event(row), "status": _status(row["rank"])} for row in rows], cursor

    async def event(self, event_id: str, with_payload: bool) -> dict[str, Any] | None:
        """One event with every attempt and the current state per matched subscriber;
        its payload when `with_payload` and it is still stored."""
        row = await self.db.fetchone(GET_EVENT, (event_id,))
        if row is None:
            return None
        states = await self.db.fetchall(SUBSCRIBER_STATES, (event_id,))
        attempts: dict[str | None, list[dict[str, Any]]] = {}
        for attempt in await self.db.fetchall(EVENT_ATTEMPTS, (event_id,)):
            attempts.setdefault(attempt["subscriber_id"], []).append(
                {name: attempt[name] for name in ATTEMPT_COLUMNS.split(", ")}
            )
        ranks = [state["rank"] for state in states]
        kept = with_payload and bool(row["payload"])
        return {
            **_event(row),
            "status": _status(max(ranks) if ranks else None),
            "payload": orjson.loads(row["payload"]) if kept else None,
            "subscribers": [_subscriber(state, attempts) for state in states],
        }

    async def stats(self, subscriber_id: str, now: float | None = None) -> dict[str, Any]:
        """Attempts, success rate and latency percentiles over the last hour and day, and
        the last failed attempt."""
        now = time.time() if now is None else now
        windows = {
            name: await self._window(subscriber_id, now - seconds)
            for name, seconds in WINDOWS.items()
        }
        last = await self.db.fetchone(LAST_ERROR, (subscriber_id,))
        return {
            "subscriber_id": subscriber_id,
            **windows,
            "last_error": dict(last) if last is not None else None,
        }

    async def _window(self, subscriber_id: str, since: float) -> dict[str, Any]:
        counts = await self.db.fetchone(WINDOW_COUNTS, (subscriber_id, since))
        attempts, delivered = (counts[0], counts[1]) if counts else (0, 0)
        wanted = {name: max(1, math.ceil(p * attempts)) for name, p in PERCENTILES.items()}
        latencies: dict[int, float] = {}
        if attempts:
            sql = WINDOW_RANKS.format(marks=",".join("?" * len(wanted)))
            rows = await self.db.fetchall(sql, (subscriber_id, since, *wanted.values()))
            latencies = {row["rank"]: row["duration_ms"] for row in rows}
        return {
            "attempts": attempts,
            "delivered": delivered,
            "failed": attempts - delivered,
            "success_rate": delivered / attempts if attempts else None,
            **{name: latencies.get(rank) for name, rank in wanted.items()},
        }


def _subscriber(state: Any, attempts: dict[str | None, list[dict[str, Any]]]) -> dict[str, Any]:
    """One matched subscriber's part of an event: its state and its attempts."""
    mine = attempts.get(state["subscriber_id"], [])
    name = STATES[state["rank"]]
    return {
        "subscriber_id": state["subscriber_id"],
        "state": name,
        "next_retry_at": mine[-1]["next_retry_at"] if mine and name == "failed" else None,
        "dead_letter_id": state["dead_letter_id"] if name == "dead" else None,
        "attempts": mine,
    }
