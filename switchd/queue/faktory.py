"""Faktory as switchd's durable queue: seed-compatible jobs over an asyncio client.

Jobs: `jobtype` = SWITCH_PRODUCTION_QUEUE_NAMESPACE, `queue` = SWITCH_PRODUCTION_QUEUE,
`args` = [target_url, filter_expression, base64(JSON payload)] exactly as the old Go
producer wrote them, switchd's ids in `custom`, `retry` = SWITCH_FAKTORY_RETRY and a
`reserve_for` longer than the worst-case delivery. A job without switchd's ids (written
by the old producer) is processed the old way: the filter in args[1] decides against the
payload in args[2], and a job it rejects is ACKed unsent.

Connections: a pool for producing (PUSHB: concurrent publishes share one, see
push_groups.py; Faktory stores the jobs of a PUSHB one after another, so up to
PRODUCER_CONNECTIONS PUSHBs are sent at once, each on a connection of its own), one more
for INFO, late ACK/FAILs and releases, one per consumer task (FETCH, ACK, FAIL), one for
the heartbeat (BEAT every 15 s; `quiet` stops fetching, `terminate` also lets the consumer
connections go). When Faktory cannot be reached the queue is *down*: pushes fail at once
(the fallback queue stores those jobs locally), fetches wait, and a maintenance task
reconnects with backoff. An ACK or FAIL that could not be sent is kept and sent when
Faktory is back, while the reservation may still hold; if it has expired, Faktory
redelivers the job (delivery is at least once).

Outcomes: delivered or skipped → ACK; transient → FAIL, so Faktory's backoff schedules
the retry, unless this was the last try the job's `retry` allows: then, as for a
permanent failure, the job goes to switchd's dead letters and is ACKed, so dead letters
live in one place whatever the backend. Faktory keeps no counter switchd could update,
so a Faktory job's `attempts` counts each earlier round as one request (a lower bound).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import math
import secrets
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog

from switchd.config import Settings
from switchd.db import Database
from switchd.dead_letters import bury
from switchd.filters import CompiledFilter, FilterError, compile_filter
from switchd.models import Event, Job, KeyRecord, Outcome
from switchd.queue.base import Disposition, QueueUnavailable
from switchd.queue.faktory_protocol import (
    FETCH_BLOCK,
    FaktoryAddress,
    FaktoryConnection,
    FaktoryError,
    FaktoryReplyError,
    FaktoryTimeout,
    FaktoryUnavailable,
)
from switchd.queue.push_groups import PushGroups
from switchd.subscribers import Subscriber

log = structlog.get_logger("switchd.queue.faktory")

RESERVE_MIN, RESERVE_MAX = 60, 86_400  # Faktory clamps reserve_for to this range
FAKTORY_DEFAULT_RETRY = 25  # what Faktory applies to a job without `retry`
HEARTBEAT_SECONDS = 15.0
PUSH_TIMEOUT = 5.0  # the longest a publish waits for Faktory before using the local queue
PRODUCER_CONNECTIONS = 16  # PUSHBs in flight at once
PUSHB_BYTES = 1 << 16  # publishes share a PUSHB up to about this size
JOB_BYTES = 512  # a job's size beside its payload, for PUSHB_BYTES (an estimate)
TICK_SECONDS = 1.0
RECONNECT_MIN, RECONNECT_MAX = 0.25, 5.0
RELEASE_DELAY = FETCH_BLOCK + 1.0
WorkerState = Literal["running", "quiet", "terminate"]


class NotStored(QueueUnavailable):
    """Faktory did not store the jobs of these subscribers (the others are stored)."""

    def __init__(self, subscribers: list[Subscriber], reason: str) -> None:
        super().__init__(reason)
        self.subscribers = subscribers


class MalformedJob(ValueError):
    """A fetched job that cannot be delivered; `job` holds what could be read of it."""

    def __init__(self, job: Job, reason: str) -> None:
        super().__init__(reason)
        self.job = job


def reserve_for(settings: Settings) -> int:
    """Seconds Faktory reserves a job for its consumer: past the worst-case delivery."""
    return min(RESERVE_MAX, max(RESERVE_MIN, math.ceil(settings.effective_lease)))


def new_jid() -> str:
    """A random job id (Faktory wants at least 8 characters)."""
    return secrets.token_urlsafe(12)


class FaktoryQueue:
    """Jobs in Faktory, produced and consumed over the Faktory protocol."""

    name = "faktory"

    def __init__(
        self, db: Database, settings: Settings, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        assert settings.faktory_url, "FaktoryQueue needs FAKTORY_URL"
        self.db = db
        self.address = FaktoryAddress.parse(settings.faktory_url)
        self.queue = settings.production_queue
        self.jobtype = settings.production_queue_namespace
        self.retry = settings.faktory_retry
        self.reserve_for = reserve_for(settings)
        # How long after its FETCH a job may wait and still have a worst-case delivery's time.
        self._start_window = self.reserve_for - settings.worst_case_delivery
        self.consuming = settings.consumer_concurrency > 0
        self.wid = secrets.token_hex(8)
        self.worker_state: WorkerState = "running"
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self.down_since: float | None = None  # set while Faktory cannot be reached
        self.last_error: str | None = None
        self.pushed = 0  # jobs Faktory has stored for this process
        self.pushes = PushGroups(self._push_group, PRODUCER_CONNECTIONS, PUSHB_BYTES)
        self._ssl = ssl_context or (ssl.create_default_context() if self.address.tls else None)
        self._producer: FaktoryConnection | None = None
        self._pushers: list[FaktoryConnection] = []  # idle producer connections of the pool
        self._heartbeat: FaktoryConnection | None = None
        self._workers: dict[asyncio.Task[Any], FaktoryConnection] = {}
        self._connect_lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._owed: list[tuple[str, dict[str, Any]]] = []  # ACK/FAIL not yet received
        self._maintenance: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start the heartbeat and reconnect task.

        A wrong password or certificate raises FaktoryAuthError (a configuration error);
        an unreachable server only leaves the queue down until it answers."""
        try:
            await self._reconnect()
            log.info("faktory_connected", address=str(self.address), wid=self.wid)
        except (FaktoryUnavailable, FaktoryReplyError) as exc:
            self._mark_down(exc)
        self._maintenance = asyncio.create_task(self._maintain(), name="faktory-maintenance")

    async def close(self) -> None:
        """Stop the maintenance task, send owed ACK/FAILs if possible, close connections."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.pushes.close()
        await asyncio.gather(*map(_flushed, self._workers.values()))
        if self._owed and self.down_since is None:
            await self._pay_owed()
        connections = [self._producer, self._heartbeat, *self._pushers, *self._workers.values()]
        self._workers.clear()
        await asyncio.gather(*(c.close() for c in connections if c is not None))

    # -- state --------------------------------------------------------------------------

    def _mark_down(self, exc: Exception) -> None:
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = time.time()
            self._up.clear()
            log.warning("faktory_down", address=str(self.address), error=self.last_error)

    def _mark_up(self) -> None:
        if self.down_since is not None:
            log.info(
                "faktory_up",
                address=str(self.address),
                down_seconds=round(time.time() - self.down_since, 3),
            )
        self.down_since = None
        self.last_error = None
        self._up.set()

    def _handle(self, exc: FaktoryError, what: str, **context: Any) -> None:
        """An error reply is logged; anything else means Faktory is down."""
        if isinstance(exc, FaktoryReplyError):
            log.warning("faktory_refused", command=what, error=str(exc), **context)
        else:
            self._mark_down(exc)

    def status(self) -> dict[str, Any]:
        """The Faktory state, for /readyz and /metrics."""
        return {
            "backend": "faktory",
            "address": str(self.address),
            "faktory": "down" if self.down_since is not None else "up",
            "down_since": self.down_since,
            "last_error": self.last_error,
            "worker_state": self.worker_state,
            "pushed": self.pushed,
            "pushbs": self.pushes.groups,
            "unsent_acks": len(self._owed),
        }

    async def check(self) -> str | None:
        """None while Faktory answers, else why not."""
        if self.down_since is None:
            return None
        return f"faktory: {self.address} unreachable: {self.last_error}"

    # -- connections --------------------------------------------------------------------

    async def _connect(self, wid: str | None = None) -> FaktoryConnection:
        return await FaktoryConnection.open(self.address, wid=wid, ssl_context=self._ssl)

    async def _reconnect(self) -> None:
        """Open the producer (and heartbeat) connection afresh, dropping the pool's idle
        ones, and check that Faktory answers a command (INFO), not just the handshake; then
        mark it up."""
        async with self._connect_lock:
            for old in (self._producer, self._heartbeat, *self._pushers):
                if old is not None:
                    await old.close()
            self._producer = self._heartbeat = None
            self._pushers.clear()
            self._producer = await self._connect()
            await self._producer.call("INFO", timeout=PUSH_TIMEOUT)
            if self.consuming and self.worker_state != "terminate":
                self._heartbeat = await self._connect(self.wid)
        self._mark_up()

    async def _producer_connection(self) -> FaktoryConnection:
        async with self._connect_lock:
            if self._producer is None or self._producer.closed:
                self._producer = await self._connect()
            return self._producer

    async def _worker_connection(self) -> FaktoryConnection:
        """The calling consumer task's own connection, opened when needed."""
        task = asyncio.current_task()
        assert task is not None
        connection = self._workers.get(task)
        if connection is None or connection.closed:
            self._forget_finished_workers()
            connection = self._workers[task] = await self._connect(self.wid)
        return connection

    def _forget_finished_workers(self) -> None:
        """Close the connections of consumer tasks that ended (the pool replaces consumers
        held up by slow endpoints, see consumers.py)."""
        for task in [t for t in self._workers if t.done()]:
            self._workers.pop(task).abort()

    async def _drop_worker_connection(self) -> None:
        task = asyncio.current_task()
        connection = self._workers.pop(task, None) if task is not None else None
        if connection is not None:
            await _flushed(connection)
            await connection.close()

    # -- maintenance: reconnect, heartbeat, owed ACK/FAILs ------------------------------

    async def _maintain(self) -> None:
        """Reconnect with backoff while down; otherwise pay owed ACK/FAILs and BEAT."""
        backoff = RECONNECT_MIN
        last_beat = time.monotonic()
        while True:
            if self.down_since is not None:
                try:
                    await self._reconnect()
                    backoff = RECONNECT_MIN
                except FaktoryError as exc:
                    self.last_error = str(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX)
                    continue
            try:
                await self._pay_owed()
                if time.monotonic() >= last_beat + self.heartbeat_seconds:
                    last_beat = time.monotonic()
                    await self._beat()
            except Exception:
                log.exception("faktory_maintenance_error")
            until_beat = last_beat + self.heartbeat_seconds - time.monotonic()
            await asyncio.sleep(min(TICK_SECONDS, max(0.0, until_beat)))

    async def _beat(self) -> None:
        if self._heartbeat is None:
            return
        try:
            state = await self._heartbeat.beat(self.wid)
        except FaktoryError as exc:  # a refusal too: Faktory reaped this worker, reconnect
            self._mark_down(exc)
            return
        await self._apply_worker_state(state)

    async def _apply_worker_state(self, state: str) -> None:
        """Follow Faktory's running → quiet → terminate; never move backwards."""
        order = ("running", "quiet", "terminate")
        if state not in order or order.index(state) <= order.index(self.worker_state):
            return
        self.worker_state = state  # type: ignore[assignment]
        log.warning("faktory_worker_" + state, wid=self.wid, effect="no more fetching")
        if state == "terminate" and self._heartbeat is not None:
            await self._heartbeat.close()
            self._heartbeat = None

    async def _pay_owed(self) -> None:
        """Send ACK/FAILs that found Faktory down, oldest first."""
        while self._owed:
            command, payload = self._owed[0]
            try:
                connection = await self._producer_connection()
                await connection.call(command, payload)
            except FaktoryReplyError as exc:  # the reservation is gone: Faktory retried it
                log.warning("faktory_late_settle_refused", command=command, error=str(exc))
            except FaktoryError as exc:
                self._mark_down(exc)
                return
            self._owed.pop(0)

    # -- producing ----------------------------------------------------------------------

    async def enqueue(
        self, event: Event, subscribers: list[Subscriber], key: KeyRecord | None = None
    ) -> None:
        """PUSHB one job per subscriber; raise NotStored naming those Faktory did not take.
        With `key` (idempotency.py): its pending row is committed before the push (if that
        fails, nothing is pushed: QueueUnavailable), its done row once Faktory took all."""
        if self.down_since is not None:
            raise NotStored(subscribers, f"faktory unreachable: {self.last_error}")
        if key is not None:
            try:
                await self.db.write([key.pending])
            except Exception as exc:
                raise QueueUnavailable(f"cannot store the idempotency key: {exc}") from exc
        payload = base64.b64encode(event.payload_json).decode()
        jobs = [self.job_for(event, s, payload) for s in subscribers]
        try:
            refused = await self.pushes.push(jobs, len(jobs) * (len(payload) + JOB_BYTES))
        except FaktoryError as exc:
            raise NotStored(subscribers, f"faktory did not store the jobs: {exc}") from exc
        self.pushed += len(jobs) - len(refused)
        if refused:
            log.warning("faktory_refused_jobs", event_id=event.id, errors=refused)
            failed = [s for s, job in zip(subscribers, jobs, strict=True) if job["jid"] in refused]
            raise NotStored(failed, f"faktory refused {len(failed)} job(s)")
        if key is not None:
            await self._mark_done(event, key)

    async def _mark_done(self, event: Event, key: KeyRecord) -> None:
        """The key's done row, after the push. Not durable: if it is lost (a power cut, a
        storage fault), the key stays pending and a retry pushes the jobs again."""
        try:
            await self.db.write([key.done], durable=False)
        except Exception as exc:  # the jobs are stored: the publish still succeeds
            log.warning("idempotency_key_left_pending", event_id=event.id, error=str(exc))

    async def _push_group(self, jobs: list[dict[str, Any]]) -> dict[str, str]:
        """PUSHB a group of publishes' jobs on an idle connection of the pool, or a new
        one; once more on a fresh one if it was found broken (it went stale, e.g. Faktory
        restarted), but not after a timeout: the publishers wait. A failure that is no
        refusal marks Faktory down, so that the publishes still waiting spill at once."""
        if self.down_since is not None:  # found down while these publishes waited
            raise FaktoryUnavailable(f"faktory unreachable: {self.last_error}")
        try:
            connection = self._pushers.pop() if self._pushers else await self._connect()
            try:
                refused = await connection.push_bulk(jobs, PUSH_TIMEOUT)
            except FaktoryTimeout:
                raise
            except FaktoryUnavailable:
                connection = await self._connect()
                refused = await connection.push_bulk(jobs, PUSH_TIMEOUT)
        except FaktoryError as exc:
            self._handle(exc, "PUSHB", jobs=len(jobs))
            raise
        self._pushers.append(connection)
        return refused

    def job_for(self, event: Event, subscriber: Subscriber, payload_base64: str) -> dict[str, Any]:
        """The Faktory job delivering `event` to `subscriber` (the seed's args layout)."""
        return {
            "jid": new_jid(),
            "jobtype": self.jobtype,
            "queue": self.queue,
            "args": [subscriber.target_url, subscriber.filter_expression, payload_base64],
            "custom": {
                "event_id": event.id,
                "subscriber_id": subscriber.id,
                "author": event.author,
                "topic": event.topic,
            },
            "retry": self.retry,
            "reserve_for": self.reserve_for,
        }

    # -- consuming ----------------------------------------------------------------------

    async def next(self) -> Job:
        """The next job to deliver, reserved for the calling consumer task."""
        while True:
            job = await self.fetch(wait=TICK_SECONDS)
            if job is not None:
                return job

    async def fetch(self, wait: float) -> Job | None:
        """One FETCH (the server holds it up to 2 s); None when no job came. While
        Faktory is down or this worker is quiet, wait up to `wait` s and return None."""
        if self.worker_state != "running":
            if self.worker_state == "terminate":
                await self._drop_worker_connection()
            await asyncio.sleep(wait)
            return None
        if self.down_since is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), wait)
            return None
        fetched_at = time.time()  # no later than the reservation's start
        try:
            connection = await self._worker_connection()
            raw = await connection.fetch([self.queue])
        except FaktoryError as exc:
            self._handle(exc, "FETCH")
            return None
        job = None if raw is None else await self._admit(raw)
        if job is not None:
            job.start_by = fetched_at + self._start_window
        return job

    async def _admit(self, raw: dict[str, Any]) -> Job | None:
        """The job to deliver, or None when it was settled here: an old-format job whose
        filter does not match is ACKed, one that cannot be read is dead-lettered."""
        try:
            job = job_from_faktory(raw)
            if job.subscriber_id is None and not old_filter_matches(job):
                log.info("job_skipped", event_id=job.event_id, reason="filter did not match")
                await self._settle_command("ACK", {"jid": job.id})
                return None
        except MalformedJob as exc:
            log.warning("faktory_job_malformed", jid=exc.job.id, error=str(exc))
            outcome = Outcome("permanent", error=str(exc), finished_at=time.time())
            try:
                await self.settle(exc.job, outcome)
            except Exception as error:  # the reservation expires and Faktory retries it
                log.warning("faktory_dead_letter_failed", jid=exc.job.id, error=str(error))
            return None
        return job

    async def settle(self, job: Job, outcome: Outcome) -> Disposition:
        """ACK (done), FAIL so that Faktory retries, or dead-letter and ACK."""
        if outcome.kind in ("delivered", "skipped"):
            await self._settle_command("ACK", {"jid": job.id})
            return "done"
        if outcome.kind == "transient" and not is_last_try(job.extra["faktory"]):
            await self._settle_command("FAIL", failure_report(job, outcome))
            return "retry"
        await self.db.write([bury(job, outcome)])
        await self._settle_command("ACK", {"jid": job.id})
        return "dead"

    def settles_detached(self, job: Job) -> bool:
        """No: ACK and FAIL go on the connection of the consumer task that fetched it."""
        return False

    async def _settle_command(self, command: str, payload: dict[str, Any]) -> None:
        """Send ACK/FAIL on the task's connection, in one write with its next FETCH (see
        FaktoryConnection.defer); keep it for later if Faktory is down."""
        try:
            if self.down_since is not None:
                raise FaktoryUnavailable(f"faktory unreachable: {self.last_error}")
            connection = await self._worker_connection()
        except FaktoryError as exc:
            self._mark_down(exc)
            self._owe(command, payload)
            return
        answer = connection.defer(command, payload)
        answer.add_done_callback(functools.partial(self._settled, command, payload))

    def _settled(self, command: str, payload: dict[str, Any], answer: asyncio.Future[Any]) -> None:
        """Faktory's reply to an ACK/FAIL: a refusal is logged; a connection that broke
        before the reply came leaves the command owed (sending it twice is harmless: a
        second ACK is answered OK, a second FAIL refused). The command that found the
        connection broken marks Faktory down, if it is."""
        exc = answer.exception()
        if isinstance(exc, FaktoryReplyError):  # e.g. the reservation expired, Faktory retried
            log.warning(
                "faktory_settle_refused", command=command, jid=payload["jid"], error=str(exc)
            )
        elif exc is not None:
            self._owe(command, payload)

    def _owe(self, command: str, payload: dict[str, Any]) -> None:
        self._owed.append((command, payload))
        log.warning("faktory_settle_deferred", command=command, jid=payload["jid"])

    async def release(self, jobs: list[Job]) -> None:
        """Shutdown: put unfinished jobs back in their queue, spending no retry, due again
        RELEASE_DELAY s later: a FETCH cancelled by this shutdown may still wait on the
        server (up to FETCH_BLOCK s), and would take a job due at once for a consumer that
        is gone (Faktory would hand it out again only once its reservation expired)."""
        due = time.time() + RELEASE_DELAY
        await self.defer([(job, due) for job in jobs])

    async def defer(self, jobs: Sequence[tuple[Job, float]]) -> None:
        """Put jobs back in their queue, each due at its time (`at`), spending no retry: a
        copy under a new jid, failure history kept, is pushed, then the original ACKed (a
        crash in between repeats the job rather than losing it). If Faktory is unreachable
        the reservation expires and Faktory retries the job (that spends a retry)."""
        now = time.time()
        for job, until in jobs:
            try:
                connection = await self._producer_connection()
                await connection.push(_copy(job, until if until > now else None))
                await connection.ack(job.id)
            except FaktoryError as exc:
                log.warning("faktory_release_failed", jid=job.id, error=str(exc))

    def retry_deadline(self, job: Job) -> float:
        """The job's latest failure (or first attempt) plus the longest Faktory's backoff
        can take for the retries it has left."""
        raw = job.extra["faktory"]
        retry = _integer(raw.get("retry"), FAKTORY_DEFAULT_RETRY)
        start = job.first_attempt_at or time.time()
        return start + longest_backoff(max(0, failures_so_far(raw) - 1), retry)


def _copy(job: Job, at: float | None) -> dict[str, Any]:
    """The job to push in place of a fetched one: a new jid, the same fields, due `at`. A
    job never attempted keeps the time endpoint isolation first held it back (its retry
    deadline counts from there)."""
    raw = job.extra["faktory"]
    copy = {k: v for k, v in raw.items() if k not in ("enqueued_at", "at")} | {"jid": new_jid()}
    if at is not None:
        copy["at"] = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    if "failure" not in raw and job.first_attempt_at is not None:
        custom = raw.get("custom") if isinstance(raw.get("custom"), dict) else {}
        copy["custom"] = {**custom, "held_since": job.first_attempt_at}
    return copy


@functools.lru_cache(maxsize=1024)
def longest_backoff(first: int, retry: int) -> float:
    """Seconds Faktory can wait in all before retries `first`..`retry` − 1 (each waits at most
    n⁴ + 15 + 29·(n + 1) s: its backoff with the largest random part)."""
    return float(sum(n**4 + 15 + 29 * (n + 1) for n in range(first, retry)))


async def _flushed(connection: FaktoryConnection) -> None:
    """Send the connection's deferred ACK/FAILs before it closes (if it fails, they are
    owed: see FaktoryQueue._settled)."""
    with contextlib.suppress(FaktoryError):
        await connection.flush()


def is_last_try(raw: dict[str, Any]) -> bool:
    """Whether a FAIL now would exhaust the job's `retry` (Faktory counts a job's failures
    in failure.retry_count: 0 after the first, and retries while retry_count < retry)."""
    retry = _integer(raw.get("retry"), FAKTORY_DEFAULT_RETRY)
    return failures_so_far(raw) >= retry


def failures_so_far(raw: dict[str, Any]) -> int:
    """How many times this job has failed before (expired reservations included)."""
    failure = raw.get("failure")
    return _integer(failure.get("retry_count"), 0) + 1 if isinstance(failure, dict) else 0


def _integer(value: Any, default: int) -> int:
    """An integer field of a job written by any producer; `default` if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def failure_report(job: Job, outcome: Outcome) -> dict[str, Any]:
    """The FAIL payload for a transient outcome, readable in Faktory's web UI."""
    error = outcome.error or "delivery failed"
    errtype = f"HTTP {outcome.status}" if outcome.status else error.split(":", 1)[0]
    return {
        "jid": job.id,
        "errtype": errtype,
        "message": error,
        "backtrace": [
            f"event_id={job.event_id}",
            f"subscriber_id={job.subscriber_id}",
            f"target_url={job.target_url}",
            f"requests_this_round={outcome.requests}",
        ],
    }


def job_from_faktory(raw: dict[str, Any]) -> Job:
    """The Job a fetched Faktory job describes; MalformedJob when its args are unusable."""
    custom = raw.get("custom") if isinstance(raw.get("custom"), dict) else {}
    args = raw.get("args") if isinstance(raw.get("args"), list) else []
    jid = str(raw.get("jid", ""))
    rounds = failures_so_far(raw)
    failure = raw.get("failure") if rounds else None
    job = Job(
        id=jid,
        event_id=str(custom.get("event_id") or jid),
        subscriber_id=str(custom["subscriber_id"]) if custom.get("subscriber_id") else None,
        topic=str(custom.get("topic", "")),
        author=str(custom.get("author", "")),
        target_url=str(args[0]) if args else "",
        filter_expression=str(args[1]) if len(args) > 1 else "",
        payload={},
        attempts=rounds,
        rounds=rounds,
        first_attempt_at=(
            _timestamp(failure.get("failed_at")) if failure else _number(custom.get("held_since"))
        ),
        extra={"faktory": raw},
    )
    if len(args) != 3 or not all(isinstance(a, str) for a in args):
        raise MalformedJob(job, "args must be [target_url, filter_expression, payload_base64]")
    try:
        payload = orjson.loads(base64.b64decode(args[2], validate=True))
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise MalformedJob(job, "args[2] is not the base64 of a JSON object")
    job.payload = payload
    return job


def old_filter_matches(job: Job) -> bool:
    """For an old-format job: does the filter in args[1] accept the payload?"""
    try:
        compiled = _compiled(job.filter_expression)
    except FilterError as exc:
        raise MalformedJob(job, f"invalid filter in args[1]: {exc}") from exc
    return compiled.matches(job.payload)


@functools.lru_cache(maxsize=256)
def _compiled(expression: str) -> CompiledFilter:
    return compile_filter(expression)


def _number(value: Any) -> float | None:
    """A number field of a job written by any producer, or None."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number and math.isfinite(value) else None


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from Faktory's RFC 3339 time, or None."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None
