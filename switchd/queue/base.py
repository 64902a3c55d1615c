"""The interface every job queue implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from switchd.models import Event, Job, KeyRecord, Outcome
from switchd.subscribers import Subscriber

Disposition = Literal["done", "retry", "dead"]


class QueueUnavailable(Exception):
    """No queue could durably store the jobs; nothing was stored."""


class JobQueue(Protocol):
    """Stores jobs at publish time and hands them to consumers."""

    name: str

    async def enqueue(
        self, event: Event, subscribers: list[Subscriber], key: KeyRecord | None = None
    ) -> None:
        """Store one job per subscriber durably before returning, or raise QueueUnavailable.
        With `key`, its done row is committed with the jobs where they share a transaction
        (else as close as the backend allows: see idempotency.py)."""

    async def next(self) -> Job:
        """Wait for the next job to deliver (leased or reserved for this consumer)."""

    async def settle(self, job: Job, outcome: Outcome) -> Disposition:
        """Record a delivery outcome: ack (done), schedule a retry, or dead-letter."""

    def settles_detached(self, job: Job) -> bool:
        """Whether `settle(job)` may run in a task of its own while the consumer that
        delivered the job goes on to its next one."""

    async def release(self, jobs: list[Job]) -> None:
        """Give unfinished jobs back to the queue at once (shutdown)."""

    async def defer(self, jobs: Sequence[tuple[Job, float]]) -> None:
        """Give jobs that were not attempted back to the queue, each due again at its time
        (Unix seconds), spending no attempt and no retry (endpoint isolation set them
        aside). Nothing is lost if this fails or is cut short: at worst a job runs twice."""

    def retry_deadline(self, job: Job) -> float:
        """When the retry schedule would have given up on `job` had every attempt failed:
        from its first attempt (`first_attempt_at`), the longest the schedule can take."""

    async def check(self) -> str | None:
        """None when the queue answers, else the reason it does not."""
