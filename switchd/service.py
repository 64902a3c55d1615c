"""The running service: database, registry, queue, consumers and their life cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from switchd.auth import TokenVerifier
from switchd.config import Settings
from switchd.consumers import ConsumerPool
from switchd.db import Database
from switchd.dead_letters import DeadLetterStore, replay
from switchd.delivery import Deliverer
from switchd.endpoints import Isolation
from switchd.event_log import EventLog
from switchd.event_queries import EventQueries
from switchd.http_client import HttpClient
from switchd.idempotency import Claim, IdempotencyKeys, Unfinished
from switchd.metrics import Metrics
from switchd.models import Event, KeyRecord, new_event_id
from switchd.queue.base import JobQueue, QueueUnavailable
from switchd.queue.faktory import FaktoryQueue
from switchd.queue.fallback import FallbackQueue
from switchd.queue.local import LocalQueue
from switchd.registry import Registry
from switchd.subscribers import Subscriber, SubscriberStore

log = structlog.get_logger("switchd.service")
CHANGES_POLL_SECONDS = 1.0  # other writers' subscriber changes are applied this often
# Subscriber changes older than this leave the change log (checked as often); a process
# that has not read the log for longer reloads every subscriber instead.
CHANGE_LOG_SECONDS = 60.0
PURGE_SECONDS = 600.0
CHECKPOINT_SECONDS = 1.0  # write-ahead log copied into the database off the commit path
WRITE_PROBE_QUIET_SECONDS = 5.0  # readiness probes a write when none committed lately


class Switchd:
    """Everything `switchd serve` runs besides the HTTP listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_name)
        self.store = SubscriberStore(self.db)
        self.metrics = Metrics()
        self.tokens = TokenVerifier(
            (settings.jwt_secret, settings.jwt_secret_previous),
            (settings.admin_jwt_secret, settings.admin_jwt_secret_previous),
        )
        self.registry = Registry(self.store, self.metrics.filter_errors.inc)
        self.local_queue = LocalQueue(self.db, settings)
        self.faktory_queue: FallbackQueue | None = None
        if settings.faktory_url:  # Faktory first, the local queue when it is unreachable
            faktory = FaktoryQueue(self.db, settings)
            self.faktory_queue = FallbackQueue(faktory, self.local_queue)
        self.queue: JobQueue = self.faktory_queue or self.local_queue
        self.isolation = Isolation(settings, self.queue, self.registry, self.metrics)
        self.dead_letters = DeadLetterStore(self.db)
        self.idempotency = IdempotencyKeys(self.db)
        self.event_log = EventLog(self.db, self.metrics, settings.log_payloads)
        self.event_queries = EventQueries(self.db)
        self.http_client: HttpClient | None = None
        self.deliverer: Deliverer | None = None
        self.consumers: ConsumerPool | None = None
        self.draining = False
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the database, load subscribers, start consumers and the change poller."""
        await self.db.open()
        await self.db.checkpoint_in_background()
        if self.faktory_queue is not None:
            try:
                await self.faktory_queue.start()
            except BaseException:  # e.g. a wrong Faktory password: nothing else is started
                await self.db.close()
                raise
        await self.registry.reload()
        self.http_client = HttpClient()
        self.deliverer = Deliverer(self.http_client, self.settings, self.registry, self.metrics)
        self.consumers = ConsumerPool(
            self.queue,
            self.deliverer,
            self.registry,
            self.store,
            self.settings.consumer_concurrency,
            self.metrics,
            self.event_log,
            self.isolation,
        )
        self.consumers.start()
        self._background = [
            asyncio.create_task(_every(CHANGES_POLL_SECONDS, self._apply_changes)),
            asyncio.create_task(_every(CHANGE_LOG_SECONDS, self._prune_changes)),
            asyncio.create_task(_every(PURGE_SECONDS, self._purge)),
            asyncio.create_task(_every(CHECKPOINT_SECONDS, self.db.checkpoint)),
            asyncio.create_task(self.event_log.run()),
        ]
        log.info(
            "started",
            subscribers=len(self.registry.by_id),
            queue=self.queue.name,
            consumers=self.settings.consumer_concurrency,
        )

    async def stop(self) -> None:
        """Drain consumers within the grace period, then close everything."""
        self.draining = True
        if self.consumers is not None:
            await self.consumers.stop(self.settings.shutdown_grace)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.event_log.close()
        if self.faktory_queue is not None:
            await self.faktory_queue.close()
        if self.http_client is not None:
            await self.http_client.close()
        await self.db.close()
        log.info("stopped")

    async def publish(self, topic: str, author: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Match subscribers and durably enqueue one job each; return the 202 body."""
        return await self._publish(topic, author, payload, None, None)

    async def publish_once(
        self, topic: str, payload: dict[str, Any], claim: Claim
    ) -> tuple[dict[str, Any], bool]:
        """`publish` under an Idempotency-Key: the 202 body, and whether it is the first
        one again (see idempotency.py)."""

        async def publish(unfinished: Unfinished | None) -> dict[str, Any]:
            return await self._publish(topic, claim.author, payload, claim, unfinished)

        return await self.idempotency.run(claim, publish)

    async def _publish(
        self,
        topic: str,
        author: str,
        payload: dict[str, Any],
        claim: Claim | None,
        unfinished: Unfinished | None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        event, matched = self._event(topic, author, payload, unfinished)
        response = unfinished.response if unfinished else _accepted(event, matched)
        key = None if claim is None else claim.record(response, event.received_at)
        await self._store(event, matched, key)
        label = self.registry.topic_label(topic)
        self.metrics.child(self.metrics.published, label).inc()
        self.metrics.child(self.metrics.matched, label).inc(len(matched))
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        log.debug("published", event_id=event.id, topic=topic, author=author, matched=len(matched))
        return response

    def _event(
        self, topic: str, author: str, payload: dict[str, Any], unfinished: Unfinished | None
    ) -> tuple[Event, list[Subscriber]]:
        """A new event and the subscribers it matches; or, for a pending key, its event
        again with the subscribers it matched then (those still registered)."""
        if unfinished is None:
            event_id, received_at = new_event_id(), time.time()
            matched = self.registry.matching(topic, payload)
        else:
            event_id, received_at = unfinished.response["event_id"], unfinished.received_at
            found = map(self.registry.get, unfinished.response["subscribers"])
            matched = [subscriber for subscriber in found if subscriber is not None]
        payload_json = orjson.dumps(payload)
        return Event(event_id, topic, author, payload, payload_json, received_at), matched

    async def _store(self, event: Event, matched: list[Subscriber], key: KeyRecord | None) -> None:
        """The event's jobs, its delivery-log row and its key: durably before the 202, the
        key with the jobs (or, without jobs, with the log row); QueueUnavailable if not."""
        ids = [s.id for s in matched]
        if matched:
            await self.queue.enqueue(event, matched, key)
            if self.queue is not self.local_queue:  # else logged with the jobs
                self.event_log.record_event(event, ids)
        elif key is None:
            self.event_log.record_event(event, ids)
        else:
            try:
                await self.db.write([self.event_log.event_row(event, ids), key.done])
            except Exception as exc:
                raise QueueUnavailable(f"cannot store the idempotency key: {exc}") from exc

    def queue_status(self) -> dict[str, Any]:
        """The queue backend's state, for /readyz."""
        if self.faktory_queue is None:
            return {"backend": "local"}
        return self.faktory_queue.status()

    async def render_metrics(self) -> bytes:
        """Refresh the gauges that are read from storage, then render every metric."""
        problem = await self.queue.check()
        self.isolation.refresh_metrics()
        self.metrics.queue_up.labels(self.queue.name).set(0 if problem else 1)
        if self.faktory_queue is not None:
            status = self.faktory_queue.status()
            self.metrics.faktory_up.set(1 if status["faktory"] == "up" else 0)
            self.metrics.faktory_spilled.set(status["spilled"])
            self.metrics.faktory_unsent.set(status["unsent_acks"])
        try:
            depth, oldest = await self.local_queue.stats()
        except Exception as exc:
            log.warning("metrics_queue_stats_failed", error=str(exc))
        else:
            self.metrics.queue_depth.labels("local").set(depth)
            age = time.time() - oldest if oldest else 0.0
            self.metrics.oldest_job_age.labels("local").set(max(0.0, age))
        return self.metrics.render()

    async def readiness(self) -> list[str]:
        """Reasons the service is not ready; empty when it is."""
        reasons = []
        if self.draining:
            reasons.append("draining: shutting down")
        try:
            await asyncio.wait_for(self.db.fetchone("SELECT 1"), timeout=2)
        except Exception as exc:
            reasons.append(f"database: {exc or type(exc).__name__}")
        write_problem = await self.db.check_writable(WRITE_PROBE_QUIET_SECONDS, timeout=2)
        if write_problem:
            reasons.append(write_problem)
        queue_problem = await self.queue.check()
        if queue_problem:
            reasons.append(queue_problem)
        return reasons

    async def _apply_changes(self) -> None:
        applied = await self.registry.catch_up()
        if applied:
            log.info("subscriber_changes_applied", changes=applied, version=self.registry.version)

    async def _prune_changes(self) -> None:
        await self.store.prune_changes(time.time() - CHANGE_LOG_SECONDS)

    async def replay(self, records: list[dict[str, Any]], strict: bool = False) -> int:
        """Enqueue dead letters again (see dead_letters.replay)."""
        return await replay(self.dead_letters, self.queue, self.registry.get, records, strict)

    async def _purge(self) -> None:
        now = time.time()
        purged = await self.event_log.purge(now - self.settings.log_retention, now)
        keys = await self.idempotency.purge()
        if purged or keys:
            log.info("purged", **purged, idempotency_keys=keys)


def _accepted(event: Event, matched: list[Subscriber]) -> dict[str, Any]:
    """The 202 body of a publish."""
    ids = [s.id for s in matched]
    return {"event_id": event.id, "topic": event.topic, "matched": len(ids), "subscribers": ids}


async def _every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` every `seconds` until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception as exc:
            log.warning("background_task_failed", task=work.__name__, error=str(exc))
