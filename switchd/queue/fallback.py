"""Faktory first, the embedded SQLite queue when Faktory cannot take the jobs.

Publishing: jobs go to Faktory. Those Faktory does not store (it is unreachable, or it
refused them) are stored in the local queue within the same publish, so the publisher
still gets its 202 and nothing is lost; the publish fails (503) only when neither queue
can store them. As soon as Faktory answers again, new jobs go to Faktory again.

Consuming: every consumer takes due local jobs first, then FETCHes from Faktory. Spilled
jobs stay local (their durable retries too) and are delivered by this instance, or by any
instance sharing its database file.

Readiness: degraded is ready. While Faktory is down but the local queue answers, this
instance accepts and delivers every event, so it keeps receiving traffic (several
instances behind one load balancer would otherwise all turn unready together the moment
their shared Faktory fails, refusing publishes they could have stored). `check()` fails
only when neither queue answers; `status()` shows the Faktory state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog

from switchd.models import Event, Job, KeyRecord, Outcome
from switchd.queue.base import Disposition
from switchd.queue.faktory import FaktoryQueue, NotStored
from switchd.queue.local import LocalQueue
from switchd.subscribers import Subscriber

log = structlog.get_logger("switchd.queue.fallback")
LOCAL_POLL_SECONDS = 0.5


class FallbackQueue:
    """A FaktoryQueue backed by the LocalQueue for whatever Faktory cannot take."""

    name = "faktory+local"

    def __init__(self, faktory: FaktoryQueue, local: LocalQueue) -> None:
        self.faktory = faktory
        self.local = local
        self.spilled = 0  # jobs stored locally because Faktory could not take them
        self._local_work = False  # the local queue may hold jobs
        self._next_local_poll = 0.0

    async def start(self) -> None:
        """Connect to Faktory; look for local jobs left by an earlier outage."""
        await self.faktory.start()
        self._local_work = await self._local_depth() > 0

    async def close(self) -> None:
        """Close the Faktory connections."""
        await self.faktory.close()

    async def enqueue(
        self, event: Event, subscribers: list[Subscriber], key: KeyRecord | None = None
    ) -> None:
        """Push to Faktory; store what it did not take in the local queue, where the key's
        done row is committed with those jobs."""
        try:
            await self.faktory.enqueue(event, subscribers, key)
            return
        except NotStored as exc:
            unstored, reason = exc.subscribers, str(exc)
        await self.local.enqueue(event, unstored, key)  # QueueUnavailable here means 503
        self.spilled += len(unstored)
        self._local_work = True
        self._next_local_poll = 0.0
        log.info("jobs_spilled_to_local", event_id=event.id, jobs=len(unstored), reason=reason)

    async def next(self) -> Job:
        """A due local job if there is one, else the next job from Faktory."""
        while True:
            job = await self._take_local()
            if job is not None:
                return job
            job = await self.faktory.fetch(wait=LOCAL_POLL_SECONDS)
            if job is not None:
                return job

    async def _take_local(self) -> Job | None:
        """Lease one due local job; poll at most every LOCAL_POLL_SECONDS when none is due,
        and not at all once the local queue is known to be empty."""
        if not self._local_work or time.monotonic() < self._next_local_poll:
            return None
        spilled = self.spilled
        try:
            jobs = await self.local.lease(1, self.local.lease_seconds)
            if jobs:
                return jobs[0]
            self._next_local_poll = time.monotonic() + LOCAL_POLL_SECONDS
            if await self._local_depth() == 0 and spilled == self.spilled:
                self._local_work = False
        except Exception as exc:
            self._next_local_poll = time.monotonic() + LOCAL_POLL_SECONDS
            log.warning("local_poll_failed", error=str(exc))
        return None

    async def _local_depth(self) -> int:
        jobs, _ = await self.local.stats()
        return jobs

    async def settle(self, job: Job, outcome: Outcome) -> Disposition:
        """Settle the job in the queue it came from."""
        return await self._origin(job).settle(job, outcome)

    def settles_detached(self, job: Job) -> bool:
        """As the queue the job came from says."""
        return self._origin(job).settles_detached(job)

    def _origin(self, job: Job) -> FaktoryQueue | LocalQueue:
        return self.faktory if "faktory" in job.extra else self.local

    async def release(self, jobs: list[Job]) -> None:
        """Give unfinished jobs back to the queues they came from."""
        await self.faktory.release([j for j in jobs if "faktory" in j.extra])
        await self.local.release([j for j in jobs if "faktory" not in j.extra])

    async def defer(self, jobs: Sequence[tuple[Job, float]]) -> None:
        """Give set-aside jobs back to the queues they came from."""
        await self.faktory.defer([(j, until) for j, until in jobs if "faktory" in j.extra])
        await self.local.defer([(j, until) for j, until in jobs if "faktory" not in j.extra])

    def retry_deadline(self, job: Job) -> float:
        """As the queue the job came from reckons it."""
        return self._origin(job).retry_deadline(job)

    async def check(self) -> str | None:
        """None while either queue can store jobs (degraded is ready), else both reasons."""
        faktory_problem = await self.faktory.check()
        if faktory_problem is None:
            return None
        local_problem = await self.local.check()
        return None if local_problem is None else f"{faktory_problem}; {local_problem}"

    def status(self) -> dict[str, Any]:
        """The Faktory state plus the spill figures, for /readyz and /metrics."""
        return {**self.faktory.status(), "spilled": self.spilled, "local_jobs": self._local_work}
