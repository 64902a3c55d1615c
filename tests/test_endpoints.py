"""The endpoint state machine (switchd/endpoints.py) on a clock the tests set: the adaptive
limit, the guard against silence, pauses and the circuit breaker; and the isolation
layer's bookkeeping against a real local queue on a temp database."""

from __future__ import annotations

import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from switchd.endpoints import (
    INVALID_ORIGIN,
    UNANSWERED_SECONDS,
    Endpoint,
    Isolation,
    Policy,
    origin_of,
)
from switchd.models import Attempt, AttemptKind, Job, Outcome
from tests.conftest import Running, Sink, StartSwitchd

POLICY = Policy(ceiling=10, failures_to_open=3, cooldown=5.0, max_cooldown=12.0)


def request(
    kind: AttemptKind,
    status: int | None,
    at: float,
    duration: float = 0.1,
    retry_after: float | None = None,
    error: str | None = None,
) -> Outcome:
    """One request's outcome, as Deliverer._attempt makes it: it ended at `at`."""
    attempt = Attempt(1, at - duration, duration, status, kind, error)
    return Outcome(kind, status, error, 1, retry_after, attempts=(attempt,))


def ok(at: float) -> Outcome:
    return request("delivered", 200, at)


def timeout(at: float) -> Outcome:
    return request("transient", None, at, duration=15.0, error="timeout")


def fresh() -> Endpoint:
    endpoint = Endpoint("http://example.test:80", POLICY, now=0.0)
    assert endpoint.acquire(0.0) is None
    endpoint.observe(ok(0.1))  # it has answered once: the full limit applies
    endpoint.release()
    return endpoint


def fill(endpoint: Endpoint, now: float, count: int) -> None:
    for _ in range(count):
        assert endpoint.acquire(now) is None


def test_origin_is_scheme_host_and_port():
    assert origin_of("https://Example.test/a?b") == "https://example.test:443"
    assert origin_of("http://u:p@[::1]:8080/x") == "http://[::1]:8080"
    assert origin_of("http://h.test/a") == origin_of("http://h.test:80/b")
    assert origin_of("not a url") == INVALID_ORIGIN


def test_a_new_endpoint_takes_one_request_until_it_answers():
    endpoint = Endpoint("http://example.test:80", POLICY, now=0.0)
    assert endpoint.limit == 10 and endpoint.acquire(0.0) is None
    assert endpoint.acquire(0.01) == "unanswered"
    endpoint.observe(ok(0.05))
    fill(endpoint, 0.06, 9)  # the full concurrency: ten in flight
    assert endpoint.acquire(0.07) == "saturated"
    endpoint.release()
    assert endpoint.acquire(0.08) is None


def test_outstanding_requests_without_an_answer_stop_new_ones():
    endpoint = fresh()
    fill(endpoint, 1.0, 2)
    assert endpoint.acquire(1.0 + UNANSWERED_SECONDS - 0.01) is None
    assert endpoint.acquire(1.0 + UNANSWERED_SECONDS + 0.01) == "unanswered"
    endpoint.observe(request("transient", 503, 2.5))  # an answer, even a failing one
    assert endpoint.acquire(2.6) is None
    for _ in range(4):
        endpoint.release()
    assert endpoint.in_flight == 0 and endpoint.acquire(9.0) is None  # idle: a fresh start


def test_limit_halves_on_transient_failures_and_grows_back_by_one_per_window():
    endpoint = Endpoint("http://example.test:80", POLICY, now=0.0)
    endpoint.policy = Policy(10, failures_to_open=100, cooldown=5.0, max_cooldown=12.0)
    limits = []
    for n, outcome in enumerate(["500", "ok", "500", "500", "500", "ok", "ok", "ok"]):
        at = 1.0 + n
        endpoint.observe(ok(at) if outcome == "ok" else request("transient", 500, at))
        limits.append(endpoint.limit)
    # a failure halves the limit (never below 1), a success adds 1/limit
    assert limits == pytest.approx([5.0, 5.2, 2.6, 1.3, 1.0, 2.0, 2.5, 2.9])
    for n in range(100):
        endpoint.observe(ok(10.0 + n))
    assert endpoint.limit == 10.0  # back to the ceiling, not beyond
    fill(endpoint, 200.0, 10)
    assert endpoint.acquire(200.0) == "saturated"


def test_the_limit_counts_whole_requests():
    endpoint = fresh()
    endpoint.observe(timeout(1.0))
    endpoint.observe(ok(1.1))
    endpoint.observe(timeout(1.2))
    assert 2 < endpoint.limit < 3
    fill(endpoint, 1.3, 2)
    assert endpoint.acquire(1.3) == "saturated"


def test_consecutive_transient_failures_open_the_circuit_and_a_probe_closes_it():
    endpoint = fresh()
    endpoint.observe(timeout(1.0))
    endpoint.observe(timeout(2.0))
    endpoint.observe(ok(3.0))  # a success resets the count
    with capture_logs() as logs:
        for n in range(3):
            allowed = endpoint.observe(timeout(4.0 + n))
    assert not allowed  # no quick retry into an open circuit
    assert endpoint.circuit == "open" and endpoint.circuit_since == 6.0
    assert [log["event"] for log in logs] == ["circuit_opened"]
    assert logs[0]["failures"] == 3 and logs[0]["cooldown_seconds"] == 5.0
    assert endpoint.acquire(10.9) == "open" and endpoint.next_chance(10.9) == 11.0

    with capture_logs() as logs:
        assert endpoint.acquire(11.0) is None  # the probe
    assert endpoint.circuit == "half_open" and logs[0]["event"] == "circuit_half_open"
    assert endpoint.acquire(11.1) == "probing" and endpoint.next_chance(11.1) is None
    with capture_logs() as logs:
        endpoint.observe(ok(11.5))
    endpoint.release()
    assert endpoint.circuit == "closed" and endpoint.circuit_since == 11.5
    assert logs == [
        {"event": "circuit_closed", "origin": endpoint.origin, "open_seconds": 5.5,
         "log_level": "info"}
    ]  # fmt: skip
    assert endpoint.acquire(11.6) is None


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_longest():
    endpoint = fresh()
    for n in range(3):
        endpoint.observe(timeout(1.0 + n))
    cooldowns = []
    now = 3.0
    for _ in range(4):
        now = endpoint.probe_at
        assert endpoint.acquire(now) is None
        endpoint.observe(timeout(now + 1.0))
        endpoint.release()
        cooldowns.append(endpoint.cooldown)
    assert cooldowns == [10.0, 12.0, 12.0, 12.0]  # doubled, capped at max_cooldown
    assert endpoint.circuit == "open" and endpoint.circuit_since == 3.0


def test_a_probe_that_made_no_request_leaves_the_circuit_open_for_the_next_job():
    endpoint = fresh()
    for n in range(3):
        endpoint.observe(timeout(1.0 + n))
    assert endpoint.acquire(8.0) is None  # the probe: its job turns out skipped
    endpoint.release()
    assert endpoint.circuit == "open" and endpoint.acquire(8.1) is None


def test_an_answer_of_any_kind_closes_the_circuit_but_a_request_never_sent_does_not():
    endpoint = fresh()
    for n in range(3):
        endpoint.observe(timeout(1.0 + n))
    assert endpoint.acquire(8.0) is None
    endpoint.observe(request("permanent", None, 8.1, error="invalid request: bad header"))
    assert endpoint.circuit == "half_open"
    endpoint.observe(request("permanent", 410, 8.2))  # Gone: alive (the subscriber is off)
    assert endpoint.circuit == "closed" and endpoint.failures == 0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_429_or_503_pauses_the_endpoint(status: int):
    endpoint = fresh()
    with capture_logs() as logs:
        allowed = endpoint.observe(request("transient", status, 1.0, retry_after=3.0))
    assert allowed and logs[0]["event"] == "endpoint_paused" and logs[0]["seconds"] == 3.0
    assert endpoint.acquire(3.99) == "paused" and endpoint.next_chance(3.99) == 4.0
    assert endpoint.acquire(4.0) is None
    endpoint.observe(request("transient", status, 5.0, retry_after=3600))
    assert endpoint.paused_until == 5.0 + POLICY.max_cooldown  # at most the longest cool-down


def test_retry_after_on_other_failures_does_not_pause():
    endpoint = fresh()
    endpoint.observe(request("transient", 500, 1.0, retry_after=30))
    assert endpoint.acquire(1.1) is None


def test_state_as_shown_and_at_rest():
    endpoint = fresh()
    assert endpoint.at_rest(1.0)
    for n in range(3):
        endpoint.observe(request("transient", 502, 1.0 + n, error="HTTP 502: bad gateway"))
    shown = endpoint.describe(3.5)
    assert shown == {
        "origin": "http://example.test:80",
        "limit": 1,
        "ceiling": 10,
        "in_flight": 0,
        "set_aside": 0,
        "circuit": "open",
        "circuit_since": 3.0,
        "consecutive_failures": 3,
        "next_probe_at": 8.0,
        "paused_until": None,
        "latency_ms": 100.0,
        "last_error": "HTTP 502: bad gateway",
        "last_error_at": 3.0,
        "last_used_at": 0.0,
    }
    assert not endpoint.at_rest(3.5)


# -- the isolation layer, on a real local queue -------------------------------------------


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def leased(app: Running, sink: Sink, count: int) -> list[Job]:
    """`count` jobs for the sink, leased from the app's local queue."""
    await app.add_subscriber(topic="t", target_url=sink.url())
    for n in range(count):
        await app.publish("t", {"body": {"n": n}})
    jobs = await app.service.local_queue.lease(count, 60)
    assert len(jobs) == count
    return jobs


def isolation(app: Running, clock: Clock, **settings: Any) -> Isolation:
    chosen = app.service.settings.__class__(**{**app.service.settings.__dict__, **settings})
    service = app.service
    return Isolation(chosen, service.local_queue, service.registry, service.metrics, clock)


async def job_rows(app: Running) -> dict[str, tuple[Any, ...]]:
    rows = await app.service.db.fetchall(
        "SELECT id, run_at, rounds, attempts, first_attempt_at FROM jobs"
    )
    return {str(row["id"]): tuple(row)[1:] for row in rows}


async def test_jobs_beyond_the_bound_go_back_to_the_queue_untouched(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    clock = Clock()
    layer = isolation(app, clock, set_aside_max=2)
    jobs = await leased(app, sink, 4)
    endpoint = layer.admit(jobs[0])
    assert endpoint is not None and endpoint.in_flight == 1
    assert [layer.admit(job) for job in jobs[1:]] == [None, None, None]  # never answered yet
    assert layer.held == 2 and len(endpoint.held) == 2
    await layer.close()  # gives back what waits: the job beyond the bound
    rows = await job_rows(app)
    run_at, rounds, attempts, first = rows[jobs[3].id]
    assert (rounds, attempts, first) == (0, 0, None)
    assert run_at == pytest.approx(clock.now + 1.0)  # due again in a second
    assert rows[jobs[1].id][0] > clock.now + 30  # still leased: held, released by the pool


async def test_a_held_job_goes_back_before_its_lease_runs_out(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    clock = Clock()
    layer = isolation(app, clock)
    first, second = await leased(app, sink, 2)
    endpoint = layer.admit(first)
    assert endpoint is not None and layer.admit(second) is None and layer.held == 1
    clock.now = second.start_by - 1.0
    assert not layer.tend() and layer.held == 1  # still room for a whole delivery
    clock.now = second.start_by - 0.4
    layer.tend()
    assert layer.held == 0
    await layer.close()
    assert (await job_rows(app))[second.id][0] == pytest.approx(clock.now + 1.0)


async def test_a_held_job_runs_when_the_endpoint_answers(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    clock = Clock()
    layer = isolation(app, clock)
    first, second = await leased(app, sink, 2)
    endpoint = layer.admit(first)
    assert endpoint is not None and layer.admit(second) is None
    assert layer.take_ready() is None
    endpoint.observe(ok(clock.now))
    layer.done(endpoint)
    assert layer.take_ready() == (second, endpoint) and endpoint.in_flight == 1
    assert layer.held == 0 and layer.take_ready() is None


async def test_an_open_circuit_buries_a_job_only_past_its_retry_deadline(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0, retry_schedule=(10.0, 20.0))
    clock = Clock()
    layer = isolation(app, clock, circuit_failures=1, circuit_cooldown=30, circuit_max_cooldown=60)
    probe, kept = await leased(app, sink, 2)
    endpoint = layer.admit(probe)
    assert endpoint is not None
    endpoint.observe(timeout(clock.now))
    layer.done(endpoint)
    assert endpoint.circuit == "open"
    assert layer.admit(kept) is None and kept.first_attempt_at == clock.now
    deadline = app.service.local_queue.retry_deadline(kept)
    assert deadline == pytest.approx(clock.now + 36.0)  # (10 + 20) s at +20 % jitter
    clock.now = deadline - 0.1
    layer.tend()
    assert await app.count("dead_letters") == 0
    clock.now = deadline
    layer.tend()
    await layer.close()
    row = await app.service.db.fetchone("SELECT attempts, last_error FROM dead_letters")
    assert row is not None and row[0] == 0 and row[1].startswith("circuit open since ")
    assert row[1].endswith(": timeout")
    assert await app.count("jobs") == 1  # the probe's job, still leased


async def test_idle_endpoints_at_rest_are_forgotten(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    clock = Clock()
    layer = isolation(app, clock)
    [job] = await leased(app, sink, 1)
    endpoint = layer.admit(job)
    assert endpoint is not None
    endpoint.observe(ok(clock.now))
    layer.done(endpoint)
    assert [e["origin"] for e in layer.snapshot()["endpoints"]] == [origin_of(sink.url())]
    clock.now += 599
    layer.tend()
    assert layer.snapshot()["endpoints"]
    clock.now += 11
    layer.tend()
    assert layer.snapshot()["endpoints"] == []
    assert layer.describe(sink.url())["latency_ms"] is None  # shown as new
