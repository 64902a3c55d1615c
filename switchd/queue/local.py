"""The embedded durable queue: jobs in SQLite, leased to consumers for a bounded time.

A lease moves a job's `run_at` into the future and bumps its `lease` counter; if the
consumer dies, `run_at` passes and the job is due again. Settling a job is conditional
on the lease counter, so a consumer whose lease expired cannot undo a newer lease.

Jobs are leased ahead: up to one per consumer waits, leased, for the next free consumer,
so a consumer finishing a delivery need not wait for a commit to get its next job. A job
that waited too long to leave a worst-case delivery inside its lease is made due again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
import structlog

from switchd.config import Settings
from switchd.db import Database, Statement
from switchd.dead_letters import bury
from switchd.models import Event, Job, KeyRecord, Outcome
from switchd.queue.base import Disposition, QueueUnavailable
from switchd.subscribers import Subscriber

log = structlog.get_logger("switchd.queue.local")

JITTER = 0.2
IDLE_POLL_SECONDS = 1.0
JOB_COLUMNS = (
    "id, event_id, subscriber_id, topic, author, target_url, filter_expression, "
    "attempts, rounds, first_attempt_at, lease"
)
# The event's row in the delivery log, stored with its jobs. A replay of an event still
# in the log keeps the row but puts the payload back (the log purge may have cleared it).
INSERT_EVENT = (
    "INSERT INTO events (id, topic, author, received_at, payload, payload_size, matched) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET payload = excluded.payload"
)
INSERT_JOB = (
    "INSERT INTO jobs (event_id, subscriber_id, topic, author, target_url, filter_expression, "
    "run_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A lease reads every due job and their events' payloads in one row (JSON texts: reading
# row by row would be a SQLite call per row, and each call hands the GIL back and forth
# with the busy event loop), then moves those jobs by their ids.
DUE_JOBS = (
    f"WITH due AS MATERIALIZED (SELECT {JOB_COLUMNS} FROM jobs WHERE run_at <= ? "
    "ORDER BY run_at LIMIT ?) "
    f"SELECT (SELECT json_group_array(json_array({JOB_COLUMNS} + 1)) FROM due), "  # new lease
    "(SELECT json_group_array(id) FROM due), "
    "(SELECT json_group_object(id, json(CAST(payload AS TEXT))) FROM events "
    "WHERE id IN (SELECT event_id FROM due))"
)
LEASE = "UPDATE jobs SET run_at = ?, lease = lease + 1 WHERE id IN (SELECT value FROM json_each(?))"
# Written with a VALUES row so that a group commit deletes many jobs in one step.
ACK = (
    "DELETE FROM jobs WHERE id IN (SELECT jobs.id FROM (VALUES (?, ?)) AS acked "
    "JOIN jobs ON jobs.id = acked.column1 AND jobs.lease = acked.column2)"
)
RETRY = (
    "UPDATE jobs SET run_at = ?, rounds = ?, attempts = ?, first_attempt_at = ?, "
    "last_status = ?, last_error = ? WHERE id = ? AND lease = ?"
)
RELEASE = "UPDATE jobs SET run_at = ? WHERE id = ? AND lease = ?"
# A job set aside: due later, its rounds and attempts untouched; the retry deadline of a
# job held back before any attempt counts from the first time it was held back.
DEFER = (
    "UPDATE jobs SET run_at = ?, first_attempt_at = COALESCE(first_attempt_at, ?) "
    "WHERE id = ? AND lease = ?"
)


class LocalQueue:
    """Jobs in the switchd database; the default queue and Faktory's fallback."""

    name = "local"

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.schedule = settings.retry_schedule
        self.lease_seconds = settings.effective_lease
        self.prefetch = settings.consumer_concurrency  # jobs leased ahead of the consumers
        self._worst_case = settings.worst_case_delivery
        self._buffer: deque[Job] = deque()  # leased, not yet taken (shutdown releases them)
        self._waiters: deque[asyncio.Future[Job]] = deque()
        self._leaser: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()

    async def enqueue(
        self, event: Event, subscribers: list[Subscriber], key: KeyRecord | None = None
    ) -> None:
        """Store the event, one job per subscriber and the key's done row (if any), all in
        one transaction: the next group commit."""
        matched = orjson.dumps([s.id for s in subscribers]).decode()
        statements: list[Statement] = [
            (
                INSERT_EVENT,
                (
                    event.id,
                    event.topic,
                    event.author,
                    event.received_at,
                    event.payload_json,
                    len(event.payload_json),
                    matched,
                ),
            )
        ]
        statements.extend(
            (
                INSERT_JOB,
                (
                    event.id,
                    s.id,
                    event.topic,
                    event.author,
                    s.target_url,
                    s.filter_expression,
                    event.received_at,
                ),
            )
            for s in subscribers
        )
        if key is not None:
            statements.append(key.done)
        try:
            await self.db.write(statements)
        except Exception as exc:
            raise QueueUnavailable(f"local queue cannot store jobs: {exc}") from exc
        self._wake.set()

    async def next(self) -> Job:
        """The next due job, leased to the caller."""
        while self._buffer:
            job = self._buffer.popleft()
            self._start_leasing()
            if time.time() <= job.start_by:
                return job
            await self._make_due([job])  # waited too long: its lease may end mid-delivery
        waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._start_leasing()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._buffer.appendleft(waiter.result())  # handed over as it was cancelled
            raise

    def _start_leasing(self) -> None:
        if self._leaser is None or self._leaser.done():
            self._leaser = asyncio.create_task(self._lease_while_needed())

    async def _lease_while_needed(self) -> None:
        """Lease jobs for the waiting consumers and hand each its job directly, one lease
        after another while any wait or fewer than `prefetch` jobs are leased ahead. The
        next lease starts as soon as one lands, before the consumers it served run: they
        would otherwise delay it by their deliveries. A lease that found fewer due jobs
        than it wanted is not repeated until a job is stored or falls due: an empty lease
        costs a commit that publishes would wait behind."""
        while (self._waiters or len(self._buffer) < self.prefetch) and not self._closing:
            self._wake.clear()
            wanted = len(self._waiters) + max(0, self.prefetch - len(self._buffer))
            try:
                jobs = await self.lease(wanted, self.lease_seconds)
                self._hand_out(jobs)
                if len(jobs) < wanted and not self._closing:
                    if not self._waiters:
                        return  # nobody waiting: the next take leases again
                    await self._idle()
            except Exception as exc:  # the store is down: the consumers wait and retry
                self._fail_waiters(exc)
                return

    async def _idle(self) -> None:
        """Until a job is stored or one falls due (at most IDLE_POLL_SECONDS)."""
        delay = await self._seconds_until_due()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _hand_out(self, jobs: list[Job]) -> None:
        for job in jobs:
            while self._waiters and self._waiters[0].done():  # its consumer was cancelled
                self._waiters.popleft()
            if self._waiters:
                self._waiters.popleft().set_result(job)
            else:
                self._buffer.append(job)

    def _fail_waiters(self, exc: Exception) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    async def _seconds_until_due(self) -> float:
        row = await self.db.fetchone("SELECT MIN(run_at) FROM jobs")
        if row is None or row[0] is None:
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, row[0] - time.time()))

    async def lease(self, limit: int, seconds: float) -> list[Job]:
        """Lease up to `limit` due jobs for `seconds`; each must start within its lease's
        first `seconds` − worst-case delivery (its `start_by`)."""
        leased_at = time.time()  # no later than the lease's own clock reading
        rows, payloads = await self.db.run_in_commit(partial(_lease, seconds, max(1, limit)))
        if rows is None:
            return []
        loaded = orjson.loads(payloads)
        start_by = leased_at + seconds - self._worst_case
        return [_job(row, loaded.get(row[1], {}), start_by) for row in orjson.loads(rows)]

    async def settle(self, job: Job, outcome: Outcome) -> Disposition:
        """Ack a delivered or skipped job, retry a transient failure, bury the rest."""
        disposition: Disposition = "dead"
        if outcome.kind in ("delivered", "skipped"):
            disposition = "done"
            statements = [(ACK, (int(job.id), job.extra["lease"]))]
        elif outcome.kind == "transient" and job.rounds < len(self.schedule):
            run_at = time.time() + self._delay(job.rounds, outcome.retry_after)
            attempts = job.attempts + outcome.requests
            first = job.first_attempt_at or outcome.finished_at
            params = (run_at, job.rounds + 1, attempts, first, outcome.status, outcome.error)
            statements = [(RETRY, (*params, int(job.id), job.extra["lease"]))]
            disposition = "retry"
            job.next_retry_at = run_at
        else:
            statements = [bury(job, outcome), (ACK, (int(job.id), job.extra["lease"]))]
        # Not durable: at a power cut the job's lease would expire and it would run again.
        await self.db.write(statements, durable=False)
        return disposition

    def settles_detached(self, job: Job) -> bool:
        """Yes: the lease keeps the job safe until its outcome is committed."""
        return True

    def _delay(self, rounds: int, retry_after: float | None) -> float:
        base = self.schedule[rounds] * random.uniform(1 - JITTER, 1 + JITTER)
        return max(base, retry_after or 0.0)

    async def release(self, jobs: list[Job]) -> None:
        """Make leased jobs due again now, including unstarted buffered ones. At shutdown:
        the queue hands out no more jobs afterwards."""
        self._closing = True
        self._wake.set()
        if self._leaser is not None:
            await asyncio.gather(self._leaser, return_exceptions=True)  # at most one lease
        jobs = [*jobs, *self._buffer]
        self._buffer.clear()
        await self._make_due(jobs)

    async def defer(self, jobs: Sequence[tuple[Job, float]]) -> None:
        """Make set-aside jobs due at their times, rounds and attempts untouched; a job
        leased again meanwhile (its lease expired) is left to its new lease."""
        if jobs:
            deferrals = [
                (DEFER, (until, job.first_attempt_at, int(job.id), job.extra["lease"]))
                for job, until in jobs
            ]
            await self.db.write(deferrals, durable=False)

    def retry_deadline(self, job: Job) -> float:
        """The first attempt plus the whole schedule at its longest (jitter included)."""
        start = job.first_attempt_at or time.time()
        return start + sum(self.schedule) * (1 + JITTER)

    async def _make_due(self, jobs: list[Job]) -> None:
        """End the leases of jobs that did not run, so that they are due now."""
        if jobs:
            now = time.time()
            releases = [(RELEASE, (now, int(j.id), j.extra["lease"])) for j in jobs]
            await self.db.write(releases, durable=False)

    async def check(self) -> str | None:
        """None when the jobs table can be read."""
        try:
            await self.db.fetchone("SELECT 1 FROM jobs LIMIT 1")
        except Exception as exc:
            return f"local queue: {exc}"
        return None

    async def stats(self) -> tuple[int, float | None]:
        """Jobs waiting or in flight, and when the oldest of their events arrived."""
        row = await self.db.fetchone(
            "SELECT COUNT(*), MIN(events.received_at) "
            "FROM jobs JOIN events ON events.id = jobs.event_id"
        )
        return (int(row[0]), row[1]) if row else (0, None)


def _lease(seconds: float, limit: int, conn: sqlite3.Connection) -> tuple[Any, Any]:
    """On the writer's thread, in a group commit (so jobs it just stored are due too): the
    leased jobs and their events' payloads, each as JSON text (None when none is due)."""
    now = time.time()
    jobs, ids, payloads = conn.execute(DUE_JOBS, (now, limit)).fetchone()
    if ids == "[]":
        return None, None
    conn.execute(LEASE, (now + seconds, ids))
    return jobs, payloads


def _job(row: list[Any], payload: dict[str, Any], start_by: float) -> Job:
    """A job from its DUE_JOBS row (the columns of JOB_COLUMNS, in order)."""
    (job_id, event_id, subscriber_id, topic, author, target_url, filter_expression) = row[:7]
    attempts, rounds, first_attempt_at, lease = row[7:]
    return Job(
        id=str(job_id),
        event_id=event_id,
        subscriber_id=subscriber_id,
        topic=topic,
        author=author,
        target_url=target_url,
        filter_expression=filter_expression,
        payload=payload,
        attempts=attempts,
        rounds=rounds,
        first_attempt_at=first_attempt_at,
        start_by=start_by,
        extra={"lease": lease},
    )
