"""The delivery log, writing side: accepted events and delivery attempts, and retention.

Publishing and delivery never wait for the log. Rows are buffered in memory and written
in batches through the database's group commit by a background task (every
FLUSH_SECONDS, sooner once BATCH_ROWS wait); what is left is written at shutdown. While
the database refuses writes the buffer keeps at most MAX_BUFFERED rows, dropping the
oldest beyond that and counting them in `switchd_event_log_dropped_total`.

With the local queue, an event that matched subscribers is logged by the queue itself,
in the transaction that stores its jobs (queue/local.py); an event that matched none but
carries an idempotency key is logged in the transaction that stores its key
(service.py); every other event (no match, or jobs pushed to Faktory) is logged here.

Retention (`purge`): events older than the window that no job needs any more go, with
their attempts; so do attempts older than the window; and unless payloads are to be
logged, the payload of every event no job needs any more is cleared. In small
transactions, so publishes never wait long behind the purge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import orjson
import structlog

from switchd.db import Database, Statement
from switchd.metrics import Metrics
from switchd.models import Event, Job, Outcome

log = structlog.get_logger("switchd.event_log")

FLUSH_SECONDS = 0.5
BATCH_ROWS = 500  # a flush starts early once this many rows wait
WRITE_ROWS = 100  # rows per database write: short transactions, publishes wait less
MAX_BUFFERED = 50_000
PURGE_ROWS = 1000  # rows per purge transaction

# On conflict: jobs Faktory did not take were stored locally with a row naming only
# their subscribers; complete the list (and leave the payload the local jobs need).
LOG_EVENT = (
    "INSERT INTO events (id, topic, author, received_at, payload, payload_size, matched, test) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET matched = excluded.matched"
)
LOG_ATTEMPT = (
    "INSERT INTO attempts (event_id, subscriber_id, attempt, at, duration_ms, status, outcome, "
    "error, next_retry_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
NO_JOB = "NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id)"
PURGE_EVENTS = (
    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
    f"WHERE received_at < ? AND {NO_JOB} LIMIT ?) RETURNING id"
)
PURGE_EVENT_ATTEMPTS = "DELETE FROM attempts WHERE event_id = ?"
PURGE_ATTEMPTS = "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at < ? LIMIT ?)"
CLEAR_PAYLOADS = (
    "UPDATE events SET payload = x'' WHERE rowid IN (SELECT rowid FROM events "
    f"WHERE length(payload) > 0 AND received_at < ? AND {NO_JOB} LIMIT ?)"
)


class EventLog:
    """Buffers log rows and writes them in batches; purges what the window no longer holds."""

    def __init__(self, db: Database, metrics: Metrics, keep_payloads: bool) -> None:
        self.db = db
        self.metrics = metrics
        self.keep_payloads = keep_payloads
        self._rows: deque[Statement] = deque()
        self._batch_ready = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._failing = False

    @property
    def buffered(self) -> int:
        """Rows waiting to be written."""
        return len(self._rows)

    def record_event(self, event: Event, matched: list[str], test: bool = False) -> None:
        """Log an accepted event and the ids of the subscribers it matched."""
        self._add(self.event_row(event, matched, test))

    def event_row(self, event: Event, matched: list[str], test: bool = False) -> Statement:
        """The statement logging an event, for a caller that commits it itself (with an
        idempotency key, say)."""
        payload = event.payload_json if self.keep_payloads else b""
        return (
            LOG_EVENT,
            (
                event.id,
                event.topic,
                event.author,
                event.received_at,
                payload,
                len(event.payload_json),
                orjson.dumps(matched).decode(),
                int(test),
            ),
        )

    def record_attempts(self, job: Job, outcome: Outcome, next_retry_at: float | None) -> None:
        """Log a delivery's HTTP requests; the last one carries the durable retry's time."""
        for i, attempt in enumerate(outcome.attempts, start=1):
            retry_at = next_retry_at if i == len(outcome.attempts) else None
            self._add(
                (
                    LOG_ATTEMPT,
                    (
                        job.event_id,
                        job.subscriber_id,
                        attempt.number,
                        attempt.started_at,
                        round(attempt.duration * 1000, 3),
                        attempt.status,
                        attempt.kind,
                        attempt.error,
                        retry_at,
                    ),
                )
            )

    def _add(self, row: Statement) -> None:
        self._rows.append(row)
        self._trim()
        if len(self._rows) >= BATCH_ROWS:
            self._batch_ready.set()

    def _trim(self) -> None:
        """Drop the oldest rows beyond MAX_BUFFERED, counting them."""
        excess = len(self._rows) - MAX_BUFFERED
        for _ in range(max(0, excess)):
            self._rows.popleft()
        if excess > 0:
            self.metrics.log_dropped.inc(excess)

    async def run(self) -> None:
        """Flush every FLUSH_SECONDS, or as soon as a batch is ready, until cancelled."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # arrives as the event is set, and shutdown would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await self._batch_ready.wait()
            self._batch_ready.clear()
            try:
                await self.flush()
            except Exception as exc:
                if not self._failing:
                    log.warning("event_log_write_failed", rows=len(self._rows), error=str(exc))
                self._failing = True
                await asyncio.sleep(FLUSH_SECONDS)
            else:
                if self._failing:
                    log.info("event_log_write_recovered")
                self._failing = False

    async def flush(self) -> None:
        """Write every buffered row now. When the database refuses them they stay
        buffered (oldest first) and the error is raised."""
        async with self._flushing:
            while self._rows:
                count = min(len(self._rows), WRITE_ROWS)
                batch = [self._rows.popleft() for _ in range(count)]
                try:
                    await self.db.write(batch, durable=False)
                except Exception:
                    self._rows.extendleft(reversed(batch))
                    self._trim()
                    raise

    async def close(self) -> None:
        """Write what is left (at shutdown: after the consumers stopped, before the
        database closes); rows the database refuses now are counted as dropped."""
        try:
            await self.flush()
        except Exception as exc:
            log.warning("event_log_rows_lost", rows=len(self._rows), error=str(exc))
            self.metrics.log_dropped.inc(len(self._rows))
            self._rows.clear()

    async def purge(self, older_than: float, now: float) -> dict[str, int]:
        """Apply the retention window (see the module docstring); return what went."""
        purged = {
            "events": await self._purge_events(older_than),
            "attempts": await self._repeat(PURGE_ATTEMPTS, older_than),
            "payloads": 0 if self.keep_payloads else await self._repeat(CLEAR_PAYLOADS, now),
        }
        return {name: count for name, count in purged.items() if count}

    async def _purge_events(self, older_than: float) -> int:
        total = 0
        while True:
            async with self.db.transaction(durable=False) as conn:
                rows = list(await conn.execute_fetchall(PURGE_EVENTS, (older_than, PURGE_ROWS)))
                await conn.executemany(PURGE_EVENT_ATTEMPTS, [(row[0],) for row in rows])
            total += len(rows)
            if len(rows) < PURGE_ROWS:
                return total

    async def _repeat(self, sql: str, bound: float) -> int:
        """Run a chunked statement (`?` bound, `?` chunk size) until a chunk is short."""
        total = 0
        while True:
            async with self.db.transaction(durable=False) as conn:
                count = (await conn.execute(sql, (bound, PURGE_ROWS))).rowcount
            total += count
            if count < PURGE_ROWS:
                return total
