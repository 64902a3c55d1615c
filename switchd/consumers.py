"""A pool of consumer tasks: take a job, deliver it, settle the outcome.

Before each delivery, endpoint isolation (endpoints.py) says whether the job's endpoint
can take it now; a job it sets aside costs the consumer nothing, and the consumer takes
other work. Nor does a consumer wait out a slow endpoint: one whose delivery has lasted
PATIENCE_SECONDS hands its place to a fresh consumer and leaves once that delivery ends
(at most STRAGGLERS_PER_CONSUMER × the concurrency of these at once). Held jobs that may
go while every consumer is busy or waits for the queue are run by helper tasks.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from switchd.delivery import Deliverer
from switchd.endpoints import Endpoint, Isolation
from switchd.event_log import EventLog
from switchd.metrics import Metrics
from switchd.models import Job, Outcome
from switchd.queue.base import Disposition, JobQueue
from switchd.registry import Registry
from switchd.subscribers import SubscriberStore

log = structlog.get_logger("switchd.consumers")
SETTLE_RETRY_SECONDS = 1.0
FETCH_RETRY_SECONDS = 1.0
PATIENCE_SECONDS = 0.5
TICK_SECONDS = 0.1  # how often held jobs and long deliveries are looked at
STRAGGLERS_PER_CONSUMER = 10


class ConsumerPool:
    """`concurrency` consumer tasks sharing one queue and one deliverer (and the helpers
    and stragglers that endpoint isolation brings, see the module docstring)."""

    def __init__(
        self,
        queue: JobQueue,
        deliverer: Deliverer,
        registry: Registry,
        store: SubscriberStore,
        concurrency: int,
        metrics: Metrics,
        event_log: EventLog,
        isolation: Isolation,
    ) -> None:
        self.queue = queue
        self.deliverer = deliverer
        self.registry = registry
        self.store = store
        self.concurrency = concurrency
        self.metrics = metrics
        self.event_log = event_log
        self.isolation = isolation
        self._tasks: set[asyncio.Task[None]] = set()  # consumers, stragglers and helpers
        self._consumers: set[asyncio.Task[None]] = set()  # those that take from the queue
        self._in_flight: dict[asyncio.Task[None], Job] = {}
        self._started: dict[asyncio.Task[None], float] = {}  # when each delivery began
        self._waiting = 0  # consumers waiting for the queue
        self._watcher: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._settle_slots = asyncio.Semaphore(max(1, concurrency))
        self._stopping = False

    def start(self) -> None:
        """Start the consumer tasks."""
        for _ in range(self.concurrency):
            self._spawn(consumer=True)
        self.isolation.start()
        self._watcher = asyncio.create_task(self._watch(), name="consumer-watch")
        self.metrics.in_flight.set_function(lambda: self.in_flight)  # read when scraped

    def _spawn(self, consumer: bool) -> None:
        """A consumer, or a helper that runs the held jobs that may go and then ends."""
        task = asyncio.create_task(self._run(consumer), name="consumer" if consumer else "helper")
        self._tasks.add(task)
        if consumer:
            self._consumers.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._consumers.discard(task)

    @property
    def in_flight(self) -> int:
        """Deliveries under way right now."""
        return len(self._in_flight)

    async def stop(self, grace: float) -> None:
        """Stop taking jobs; give in-flight deliveries and the settling of finished ones
        `grace` seconds; release the unfinished jobs."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        deadline = time.monotonic() + grace
        busy = set(self._in_flight)
        for task in self._tasks:
            if task not in busy:
                task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            unfinished = [self._in_flight[t] for t in late if t in self._in_flight]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if unfinished:
                log.warning("shutdown_unfinished", jobs=len(unfinished))
        else:
            unfinished = []
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._finish_settling(deadline - time.monotonic())
        held = await self.isolation.close()
        await self.queue.release(unfinished + held)

    async def _finish_settling(self, timeout: float) -> None:
        """Wait for detached settles; past `timeout` their jobs' leases expire instead."""
        if not self._settling:
            return
        _, late = await asyncio.wait(set(self._settling), timeout=max(0.0, timeout))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.warning("shutdown_unsettled", jobs=len(late))

    async def _run(self, consumer: bool) -> None:
        """Deliver held jobs that may go, else (a consumer) the queue's next job, until
        stopped or (a consumer) retired; a helper ends when no held job may go."""
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping and (not consumer or task in self._consumers):
            ready = self.isolation.take_ready()
            if ready is not None:
                job, endpoint = ready
            elif not consumer:
                return
            else:
                job = await self._next()
                endpoint = self.isolation.admit(job)
                if endpoint is None:
                    continue  # set aside: take other work
            self._in_flight[task] = job
            self._started[task] = time.monotonic()
            try:
                await self._process(job, endpoint)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer_error", event_id=job.event_id, job_id=job.id)
            finally:
                self.isolation.done(endpoint)
                self._in_flight.pop(task, None)
                self._started.pop(task, None)

    async def _next(self) -> Job:
        self._waiting += 1
        try:
            while True:
                try:
                    return await self.queue.next()
                except Exception as exc:  # the store or broker is down: wait, then try again
                    log.warning("fetch_failed", queue=self.queue.name, error=str(exc))
                    await asyncio.sleep(FETCH_RETRY_SECONDS)
        finally:
            self._waiting -= 1

    async def _watch(self) -> None:
        """Every TICK_SECONDS: hand the place of consumers held up by a delivery to fresh
        ones; let isolation review its held jobs, and start a helper for those that may
        go when some consumer only waits for the queue."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self._replace_held_up()
                if self.isolation.tend() and self._waiting and self._room():
                    self._spawn(consumer=False)
            except Exception:
                log.exception("consumer_watch_error")

    def _replace_held_up(self) -> None:
        now = time.monotonic()
        for task, started in list(self._started.items()):
            if now - started > PATIENCE_SECONDS and task in self._consumers and self._room():
                self._consumers.discard(task)  # it leaves once this delivery ends
                self._spawn(consumer=True)
                self.metrics.handoffs.inc()

    def _room(self) -> bool:
        """Whether another straggler or helper may run beside the consumers."""
        return len(self._tasks) - len(self._consumers) < STRAGGLERS_PER_CONSUMER * max(
            1, self.concurrency
        )

    async def _process(self, job: Job, endpoint: Endpoint) -> None:
        outcome = await self.deliverer.deliver(job, endpoint.observe)
        self.metrics.child(self.metrics.deliveries, outcome.kind).inc()
        if outcome.gone and job.subscriber_id:
            await self._disable(job.subscriber_id)
        if outcome.kind == "skipped":
            log.info("job_skipped", event_id=job.event_id, reason=outcome.error)
        if not self.queue.settles_detached(job):
            await self._record(job, outcome)
            return
        # The job stays leased until its outcome is committed, so this consumer can take
        # its next job meanwhile; the outcomes of many consumers then share a commit.
        await self._settle_slots.acquire()
        task = asyncio.create_task(self._record(job, outcome))
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self._settle_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("settle_error", error=repr(task.exception()))

    async def _record(self, job: Job, outcome: Outcome) -> None:
        """Settle the job in its queue, then log its attempts."""
        disposition = await self._settle(job, outcome)
        retry_at = job.next_retry_at if disposition == "retry" else None
        self.event_log.record_attempts(job, outcome, retry_at)

    async def _settle(self, job: Job, outcome: Outcome) -> Disposition:
        while True:
            try:
                disposition = await self.queue.settle(job, outcome)
                self.metrics.child(self.metrics.settled, disposition).inc()
                return disposition
            except Exception as exc:
                # The lease keeps the job safe; retry until the store answers again.
                log.warning("settle_failed", event_id=job.event_id, error=str(exc))
                await asyncio.sleep(SETTLE_RETRY_SECONDS)

    async def _disable(self, subscriber_id: str) -> None:
        """Turn the subscriber off (it answered 410); log what happened, never raise."""
        reason = "endpoint answered 410 Gone"
        try:
            change = await self.store.disable(subscriber_id, reason)
        except Exception as exc:
            log.error("subscriber_disable_failed", subscriber_id=subscriber_id, error=str(exc))
            return
        log.warning("subscriber_disabled", subscriber_id=subscriber_id, reason=reason)
        if change is not None:
            await self.registry.apply([change])
