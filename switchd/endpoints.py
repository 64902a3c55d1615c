"""Endpoint isolation (DESIGN §10): one sick endpoint never holds up the other subscribers.

An endpoint is a subscriber target's origin (scheme, host, port). The consumers ask
`Isolation` before each delivery and tell it how each request went; delivery knows
nothing of it. Per endpoint (`Endpoint`, a state machine on the caller's clock):

- an adaptive in-flight limit (AIMD): it starts at the ceiling (the consumer concurrency,
  or SWITCH_ENDPOINT_MAX_IN_FLIGHT when lower), halves with every transient failure
  (timeout, connection error, 408, 425, 429, 5xx) down to 1, and grows by 1/limit with
  every success, back up to the ceiling;
- no pile-up on silence: an endpoint that has never answered takes one request at a time,
  and one whose outstanding requests have had no answer for UNANSWERED_SECONDS takes none
  more until one comes;
- a pause: `Retry-After` on a 429 or 503 holds every request to the endpoint that long
  (at most the longest cool-down);
- a circuit breaker: SWITCH_CIRCUIT_FAILURES consecutive transient failures open it;
  after a cool-down (SWITCH_CIRCUIT_COOLDOWN) one probe request goes out (half-open); an
  answer closes the circuit, a failure opens it again for twice as long, up to
  SWITCH_CIRCUIT_MAX_COOLDOWN.

A job its endpoint cannot take now is set aside, spending no attempt and no retry: it is
held in memory (at most SWITCH_SET_ASIDE_MAX jobs, each only while its lease or Faktory
reservation still leaves time for a whole delivery) and run as soon as the endpoint can
take it, or else given back to its queue, due when the endpoint should take it. A job an
open circuit keeps is dead-lettered once the retry schedule would have given up on it
(`JobQueue.retry_deadline`, from its first attempt or its first time held back), and only
after a probe failed past that deadline: never sooner than the schedule, never later than
the schedule's span plus one cool-down.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import structlog

from switchd.config import Settings
from switchd.http_client import Target
from switchd.metrics import Metrics
from switchd.models import Job, Outcome
from switchd.queue.base import JobQueue
from switchd.registry import Registry

log = structlog.get_logger("switchd.endpoints")

UNANSWERED_SECONDS = 1.0
DECREASE = 0.5  # the limit's factor after a transient failure
LATENCY_WEIGHT = 0.2  # of the newest answer in an endpoint's average latency
HOLD_MARGIN = 0.5  # seconds before its start_by a held job goes back to its queue
MIN_GIVE_BACK = 1.0  # the soonest a job given back for a busy endpoint is due again
PAUSING_STATUSES = frozenset({429, 503})
WORST_SHOWN = 10  # endpoints labelled in switchd_endpoint_limit
FORGET_SECONDS = 600.0  # an idle endpoint at rest is forgotten after this long
MAX_ENDPOINTS = 10_000  # beyond this, endpoints at rest are forgotten at once
SWEEP_SECONDS = 10.0
INVALID_ORIGIN = "(invalid URL)"

Circuit = Literal["closed", "open", "half_open"]
Refusal = Literal["saturated", "unanswered", "paused", "open", "probing"]
REFUSALS: tuple[str, ...] = get_args(Refusal)
CIRCUITS: tuple[str, ...] = get_args(Circuit)


@dataclass(frozen=True)
class Policy:
    """The isolation settings every endpoint follows."""

    ceiling: int  # the highest (and first) in-flight limit
    failures_to_open: int
    cooldown: float
    max_cooldown: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        ceiling = max(1, settings.consumer_concurrency)
        if settings.endpoint_max_in_flight:
            ceiling = min(ceiling, settings.endpoint_max_in_flight)
        return cls(
            ceiling,
            settings.circuit_failures,
            settings.circuit_cooldown,
            settings.circuit_max_cooldown,
        )


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> str:
    """`scheme://host:port` of a target URL (the port always given)."""
    try:
        scheme, host, port = Target.parse(url).origin
    except ValueError:
        return INVALID_ORIGIN
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class Endpoint:
    """One origin's limit, pause and circuit breaker, and the jobs set aside for it. Every
    method takes the time from its caller, so the state machine runs on any clock."""

    __slots__ = (
        "answered",
        "circuit",
        "circuit_since",
        "cooldown",
        "failures",
        "held",
        "in_flight",
        "last_error",
        "last_error_at",
        "latency",
        "limit",
        "origin",
        "paused_until",
        "policy",
        "probe_at",
        "quiet_since",
        "ready",
        "used_at",
    )

    def __init__(self, origin: str, policy: Policy, now: float) -> None:
        self.origin = origin
        self.policy = policy
        self.limit = float(policy.ceiling)
        self.in_flight = 0
        self.held: deque[Job] = deque()  # set aside in memory, oldest first
        self.ready = False  # queued for the consumers in Isolation's ready deque
        self.circuit: Circuit = "closed"
        self.circuit_since = now  # when it last left or came back to closed
        self.cooldown = 0.0  # the current cool-down while not closed
        self.probe_at = 0.0  # while open: when the probe may go
        self.failures = 0  # consecutive transient failures
        self.paused_until = 0.0
        self.answered = False  # has it ever answered a request?
        self.quiet_since = now  # its last answer, or when its requests began to wait
        self.latency = 0.0  # average seconds of its answers
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.used_at = now

    def refusal(self, now: float) -> Refusal | None:
        """Why a new request may not go out now; None when it may."""
        if self.circuit != "closed":
            if self.circuit == "half_open":
                return "probing"
            return "open" if now < self.probe_at else None
        if now < self.paused_until:
            return "paused"
        if self.in_flight:
            if self.in_flight + 1 > self.limit:
                return "saturated"
            if not self.answered or now - self.quiet_since > UNANSWERED_SECONDS:
                return "unanswered"
        return None

    def acquire(self, now: float) -> Refusal | None:
        """Take a slot for a delivery, or say why not (then nothing changes). Past an open
        circuit's cool-down, the delivery taking the slot is its probe."""
        refusal = self.refusal(now)
        if refusal is None:
            if self.circuit == "open":
                self.circuit = "half_open"
                log.info("circuit_half_open", origin=self.origin, after_seconds=self.cooldown)
            if not self.in_flight:
                self.quiet_since = now
            self.in_flight += 1
            self.used_at = now
        return refusal

    def release(self) -> None:
        """A delivery ended, all its requests included."""
        self.in_flight -= 1
        if self.circuit == "half_open" and not self.in_flight:
            self.circuit = "open"  # the probe ended without a request: the next job probes

    def observe(self, outcome: Outcome) -> bool:
        """Learn from one request's outcome (one attempt); whether a quick retry of the
        same delivery may follow."""
        attempt = outcome.attempts[0]
        now = attempt.started_at + attempt.duration
        if outcome.status is not None:  # an answer, whatever it says
            weight = LATENCY_WEIGHT if self.answered else 1.0
            self.latency += (attempt.duration - self.latency) * weight
            self.answered = True
            self.quiet_since = now
        if outcome.kind == "transient":
            self._failed(outcome, now)
        elif outcome.status is not None:  # delivered, or refused for good: it is alive
            self._succeeded(outcome.kind == "delivered", now)
        return self.circuit == "closed"

    def _failed(self, outcome: Outcome, now: float) -> None:
        self.failures += 1
        self.limit = max(1.0, self.limit * DECREASE)
        self.last_error, self.last_error_at = outcome.error, now
        if outcome.retry_after and outcome.status in PAUSING_STATUSES:
            self._pause(outcome.retry_after, now)
        if self.circuit == "half_open":
            self._open(now, self.cooldown * 2)
        elif self.circuit == "closed" and self.failures >= self.policy.failures_to_open:
            self._open(now, self.policy.cooldown)

    def _succeeded(self, delivered: bool, now: float) -> None:
        self.failures = 0
        if delivered and self.limit < self.policy.ceiling:
            self.limit = min(float(self.policy.ceiling), self.limit + 1 / self.limit)
        if self.circuit != "closed":
            open_seconds = round(now - self.circuit_since, 3)
            log.info("circuit_closed", origin=self.origin, open_seconds=open_seconds)
            self.circuit, self.circuit_since, self.cooldown = "closed", now, 0.0

    def _pause(self, seconds: float, now: float) -> None:
        until = now + min(seconds, self.policy.max_cooldown)
        if until > self.paused_until:
            self.paused_until = until
            log.info("endpoint_paused", origin=self.origin, seconds=round(until - now, 3))

    def _open(self, now: float, cooldown: float) -> None:
        after_probe = self.circuit == "half_open"
        if self.circuit == "closed":
            self.circuit_since = now
        self.circuit = "open"
        self.cooldown = min(self.policy.max_cooldown, cooldown)
        self.probe_at = now + self.cooldown
        log.warning(
            "circuit_opened",
            origin=self.origin,
            failures=self.failures,
            cooldown_seconds=self.cooldown,
            after_probe=after_probe,
            error=self.last_error,
        )

    def next_chance(self, now: float) -> float | None:
        """When it may take a request again, if known (an open circuit's probe, a pause's
        end); None when that waits on a request ending."""
        if self.circuit == "open":
            return self.probe_at
        if self.circuit == "closed" and now < self.paused_until:
            return self.paused_until
        return None

    def drain_time(self) -> float:
        """Roughly how long the jobs held for it will take, at its pace."""
        estimate = self.latency * (len(self.held) + 1) / self.limit
        return min(self.policy.max_cooldown, max(MIN_GIVE_BACK, estimate))

    def at_rest(self, now: float) -> bool:
        """Nothing to remember: idle, closed, unlimited, unpaused."""
        return (
            not self.in_flight
            and not self.held
            and self.circuit == "closed"
            and self.failures == 0
            and self.limit >= self.policy.ceiling
            and now >= self.paused_until
        )

    def describe(self, now: float) -> dict[str, Any]:
        """Its state, as `GET /endpoints` shows it."""
        return {
            "origin": self.origin,
            "limit": int(self.limit),
            "ceiling": self.policy.ceiling,
            "in_flight": self.in_flight,
            "set_aside": len(self.held),
            "circuit": self.circuit,
            "circuit_since": self.circuit_since,
            "consecutive_failures": self.failures,
            "next_probe_at": self.probe_at if self.circuit == "open" else None,
            "paused_until": self.paused_until if now < self.paused_until else None,
            "latency_ms": round(self.latency * 1000, 1) if self.answered else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_used_at": self.used_at,
        }


class Isolation:
    """The endpoints and the jobs set aside: what the consumers ask before a delivery.

    `admit`, `take_ready`, `done` and the endpoint's `observe` are the consumers' hot
    path: dictionary lookups and a few comparisons, no await. Giving jobs back to their
    queue and burying the ones an open circuit kept too long happen in a task of its own.
    """

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        registry: Registry,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = Policy.from_settings(settings)
        self.max_held = settings.set_aside_max
        self.queue = queue
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.held = 0  # jobs set aside in memory, all endpoints together
        self._endpoints: dict[str, Endpoint] = {}
        self._holding: set[Endpoint] = set()  # the endpoints with jobs held
        self._ready: deque[Endpoint] = deque()  # endpoints that may take a held job now
        self._returns: list[tuple[Job, float]] = []  # to give back, each due at its time
        self._burials: list[tuple[Job, Outcome]] = []
        self._work = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._swept = clock()
        metrics.circuits_open.set_function(self.circuits_open)
        metrics.set_aside.set_function(lambda: self.held)

    # -- the consumers' side -------------------------------------------------------------

    def admit(self, job: Job) -> Endpoint | None:
        """The job's endpoint, a slot taken for its delivery; or None: the job was set
        aside (held, given back, or dead-lettered past its deadline)."""
        endpoint = self.endpoint_for(job)
        now = self.clock()
        refusal = endpoint.acquire(now)
        if refusal is None:
            return endpoint
        self._set_aside(job, endpoint, refusal, now)
        return None

    def take_ready(self) -> tuple[Job, Endpoint] | None:
        """A held job whose endpoint can take it now, its slot taken; None if there is none."""
        while self._ready:
            endpoint = self._ready.popleft()
            endpoint.ready = False
            if not endpoint.held:
                continue
            now = self.clock()
            if endpoint.acquire(now) is not None:
                continue  # `done` or `tend` queues it again when it can take one
            job = endpoint.held.popleft()
            self.held -= 1
            if endpoint.held:
                self._queue_ready(endpoint)  # its next job after the other endpoints'
            else:
                self._holding.discard(endpoint)
            if now > job.start_by:  # held too long: its lease could end mid-delivery
                endpoint.release()
                self._give_back(job, now + MIN_GIVE_BACK)
                continue
            return job, endpoint
        return None

    def done(self, endpoint: Endpoint) -> None:
        """A delivery admitted by `admit` or `take_ready` ended."""
        endpoint.release()
        if endpoint.held and not endpoint.ready:
            self._queue_ready(endpoint)

    def endpoint_for(self, job: Job) -> Endpoint:
        """The endpoint of the job's subscriber's current URL (known or new)."""
        subscriber = self.registry.get(job.subscriber_id)
        origin = origin_of(subscriber.target_url if subscriber else job.target_url)
        endpoint = self._endpoints.get(origin)
        if endpoint is None:
            endpoint = self._endpoints[origin] = Endpoint(origin, self.policy, self.clock())
        return endpoint

    # -- setting aside -------------------------------------------------------------------

    def _set_aside(self, job: Job, endpoint: Endpoint, refusal: Refusal, now: float) -> None:
        self.metrics.child(self.metrics.jobs_deferred, refusal).inc()
        if refusal in ("open", "probing") and job.first_attempt_at is None:
            job.first_attempt_at = now  # its retry deadline counts from here
        chance = endpoint.next_chance(now)
        if self._expired(job, endpoint, now):
            self._bury(job, endpoint, now)
        elif self.held < self.max_held and _may_hold(job, chance, now):
            endpoint.held.append(job)
            self.held += 1
            self._holding.add(endpoint)
        else:
            self._give_back(job, chance or now + endpoint.drain_time())

    def _expired(self, job: Job, endpoint: Endpoint, now: float) -> bool:
        """Whether the open circuit has kept `job` past its retry deadline."""
        return endpoint.circuit == "open" and now >= self.queue.retry_deadline(job)

    def _give_back(self, job: Job, until: float) -> None:
        self._returns.append((job, until))
        self._work.set()

    def _bury(self, job: Job, endpoint: Endpoint, now: float) -> None:
        error = f"circuit open since {_iso(endpoint.circuit_since)}: {endpoint.last_error}"
        log.warning(
            "job_dead_circuit_open",
            event_id=job.event_id,
            subscriber_id=job.subscriber_id,
            origin=endpoint.origin,
            error=endpoint.last_error,
        )
        self._burials.append((job, Outcome("permanent", error=error, finished_at=now)))
        self._work.set()

    def _queue_ready(self, endpoint: Endpoint) -> None:
        endpoint.ready = True
        self._ready.append(endpoint)

    # -- time ----------------------------------------------------------------------------

    def tend(self) -> bool:
        """Run often (the consumer pool does, every few tenths of a second): review the
        held jobs, queue the endpoints that can take one again, forget endpoints at rest.
        Returns whether held jobs may go now (for consumers to take)."""
        now = self.clock()
        for endpoint in list(self._holding):
            self._review(endpoint, now)
        if now - self._swept > SWEEP_SECONDS:
            self._forget(now)
        return bool(self._ready)

    def _review(self, endpoint: Endpoint, now: float) -> None:
        """Bury the held jobs an open circuit kept past their deadline; give back those
        whose lease runs out, or that the endpoint cannot take before it does."""
        chance = endpoint.next_chance(now)
        kept: deque[Job] = deque()
        for job in endpoint.held:
            if self._expired(job, endpoint, now):
                self._bury(job, endpoint, now)
            elif not _may_hold(job, chance, now):
                self._give_back(job, chance or now + endpoint.drain_time())
            else:
                kept.append(job)
        self.held -= len(endpoint.held) - len(kept)
        endpoint.held = kept
        if not kept:
            self._holding.discard(endpoint)
        elif not endpoint.ready and endpoint.refusal(now) is None:
            self._queue_ready(endpoint)

    def _forget(self, now: float) -> None:
        """Drop endpoints at rest that were idle for FORGET_SECONDS, and, while there are
        more than MAX_ENDPOINTS, the longest idle of those at rest."""
        self._swept = now
        resting = [e for e in self._endpoints.values() if e.at_rest(now)]
        excess = len(self._endpoints) - MAX_ENDPOINTS
        by_idleness = heapq.nsmallest(max(0, excess), resting, key=lambda e: e.used_at)
        for endpoint in by_idleness + [e for e in resting if now - e.used_at > FORGET_SECONDS]:
            self._endpoints.pop(endpoint.origin, None)

    # -- the queue's side: giving back and burying, in a task of its own -----------------

    def start(self) -> None:
        """Start the task that gives jobs back to their queue and buries expired ones."""
        self._worker = asyncio.create_task(self._work_off(), name="endpoint-isolation")

    async def _work_off(self) -> None:
        while not self._closing:
            await self._work.wait()
            self._work.clear()
            await self._flush()

    async def _flush(self) -> None:
        returns, self._returns = self._returns, []
        burials, self._burials = self._burials, []
        if returns:
            try:
                await self.queue.defer(returns)
            except Exception as exc:  # their leases expire: due again, nothing lost
                log.warning("give_back_failed", jobs=len(returns), error=str(exc))
        for job, outcome in burials:
            try:
                disposition = await self.queue.settle(job, outcome)
            except Exception as exc:  # the lease expires: it comes back and is buried then
                log.warning("bury_failed", event_id=job.event_id, error=str(exc))
            else:
                self.metrics.child(self.metrics.settled, disposition).inc()

    async def close(self) -> list[Job]:
        """Give back and bury what waits for it, stop the task; return the jobs held (for
        the queue to release with the unfinished ones)."""
        self._closing = True
        self._work.set()
        if self._worker is not None:
            await self._worker
        await self._flush()
        held = [job for endpoint in self._holding for job in endpoint.held]
        for endpoint in self._holding:
            endpoint.held.clear()
        self._holding.clear()
        self.held = 0
        return held

    # -- what is shown -------------------------------------------------------------------

    def circuits_open(self) -> int:
        """Endpoints whose circuit is not closed."""
        return sum(1 for e in self._endpoints.values() if e.circuit != "closed")

    def snapshot(self) -> dict[str, Any]:
        """`GET /endpoints`: every known endpoint, the worst first."""
        now = self.clock()
        ordered = sorted(self._endpoints.values(), key=_worst_first)
        return {
            "endpoints": [endpoint.describe(now) for endpoint in ordered],
            "set_aside": self.held,
            "set_aside_max": self.max_held,
        }

    def describe(self, url: str) -> dict[str, Any]:
        """The state of the endpoint of `url` (a fresh one's if it is not known)."""
        now = self.clock()
        origin = origin_of(url)
        endpoint = self._endpoints.get(origin) or Endpoint(origin, self.policy, now)
        return endpoint.describe(now)

    def refresh_metrics(self) -> None:
        """Label switchd_endpoint_limit with the WORST_SHOWN endpoints of lowest limit."""
        worst = heapq.nsmallest(WORST_SHOWN, self._endpoints.values(), key=_worst_first)
        self.metrics.endpoint_limit.clear()
        for endpoint in worst:
            self.metrics.endpoint_limit.labels(endpoint.origin).set(int(endpoint.limit))


def _may_hold(job: Job, chance: float | None, now: float) -> bool:
    """Whether `job` may wait in memory: its endpoint may take it (at `chance`, if known)
    while its lease or reservation still leaves room for a whole delivery."""
    latest = job.start_by - HOLD_MARGIN
    return now < latest and (chance is None or chance < latest)


def _worst_first(endpoint: Endpoint) -> tuple[bool, float, str]:
    return (endpoint.circuit == "closed", endpoint.limit / endpoint.policy.ceiling, endpoint.origin)
