"""Endpoint isolation (DESIGN §10): one sick endpoint never holds up the other subscribers.

Real parts: `switchd serve` subprocesses with their default delivery timeout (15 s) and
consumer count (10) unless a test says otherwise, sinks on 127.0.0.1 on ports of their
own, and `Silent`, an endpoint that accepts requests and never answers them.
`pytest -s` prints the healthy subscriber's delivery latencies (the issue's figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from switchd.auth import mint
from tests.conftest import SECRET, Sink, StartSwitchd, clean_environ, serve_sink
from tests.test_event_log import event_where
from tests.test_process import Server

pytestmark = pytest.mark.timeout(180)

HANGING_EVENTS = 60  # per hanging endpoint, as in the issue
HEALTHY_EVENTS, HEALTHY_RATE = 100, 20.0  # events, per second


class Silent:
    """An endpoint on 127.0.0.1 that reads each request and, while `hanging`, never
    answers it (the connection stays open until the client gives up); otherwise it
    answers 200 at once. It records the event id of every request that arrived, and of
    every request it answered."""

    def __init__(self) -> None:
        self.hanging = True
        self.arrived: list[str] = []
        self.answered: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
                headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
                await reader.readexactly(int(headers.get("content-length", "0")))
                event_id = headers.get("x-switch-event-id", "")
                self.arrived.append(event_id)
                if self.hanging:
                    await reader.read()  # until switchd gives up and closes the connection
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                self.answered.append(event_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
async def silent() -> AsyncIterator[Callable[[], Any]]:
    """Start Silent endpoints, each on a port of its own; all are stopped at the end."""
    started: list[Silent] = []

    async def start() -> Silent:
        endpoint = Silent()
        await endpoint.start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        await endpoint.stop()


class Served(Server):
    """`switchd serve` (tests/test_process.py) whose JSON log lines are read as they come
    (a pipe nobody reads fills up and stalls the process), with the calls tests need."""

    lines: list[dict[str, Any]]

    async def start(self) -> None:
        await super().start()
        assert self.process is not None and self.process.stderr is not None
        self.lines = []
        self._reading = asyncio.create_task(self._read(self.process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            with contextlib.suppress(orjson.JSONDecodeError):
                self.lines.append(orjson.loads(line))

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    async def subscribe(self, topic: str, target_url: str) -> dict[str, Any]:
        body = {"topic": topic, "target_url": target_url}
        status, subscriber = await self.call("POST", "/subscribers", body, admin=True)
        assert status == 201, subscriber
        return subscriber

    async def endpoints(self) -> dict[str, dict[str, Any]]:
        """GET /endpoints, by origin."""
        status, body = await self.call("GET", "/endpoints", None, admin=True)
        assert status == 200, body
        return {endpoint["origin"]: endpoint for endpoint in body["endpoints"]}

    async def publish(self, topic: str, count: int, rate: float | None = None) -> list[str]:
        """Publish `count` events on `topic` (at `rate` per second, else at once), each
        body carrying `n` and the time it was `sent`; return their event ids."""
        headers = {"Authorization": "Bearer " + mint(SECRET, "svc")}
        ids = []
        started = time.monotonic()
        async with aiohttp.ClientSession(headers=headers) as client:
            for n in range(count):
                body = {"topic": topic, "payload": {"body": {"n": n, "sent": time.time()}}}
                async with client.post(self.url + "/publish", json=body) as response:
                    assert response.status == 202, await response.text()
                    ids.append((await response.json())["event_id"])
                if rate:
                    await asyncio.sleep(max(0.0, started + (n + 1) / rate - time.monotonic()))
        return ids


def origin(url: str) -> str:
    return url.removesuffix("/hook")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@pytest.mark.parametrize("hanging_count", [1, 5])
async def test_healthy_subscriber_keeps_its_latency_while_endpoints_hang(
    tmp_path: Path, sink: Sink, silent: Callable[[], Any], hanging_count: int
):
    """The issue's scenario, with the default delivery timeout (15 s) and 10 consumers:
    60 events for each hanging endpoint, then 100 at 20/s for the healthy one."""
    server = Served(tmp_path / "s.db", SWITCH_SHUTDOWN_GRACE="1")
    await server.start()
    try:
        hanging = [await silent() for _ in range(hanging_count)]
        for i, endpoint in enumerate(hanging):
            await server.subscribe(f"stuck-{i}", endpoint.url)
        await server.subscribe("fine", sink.url())
        for i in range(hanging_count):
            await server.publish(f"stuck-{i}", HANGING_EVENTS)
        started = time.monotonic()
        await server.publish("fine", HEALTHY_EVENTS, rate=HEALTHY_RATE)
        received = await sink.wait_for(HEALTHY_EVENTS, timeout=10)
        latencies = [r.at - r.json()["sent"] for r in received]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"\nhealthy subscriber, {hanging_count} hanging endpoint(s) × {HANGING_EVENTS} "
            f"events, {HEALTHY_EVENTS} events at {HEALTHY_RATE:g}/s: delivery latency "
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )
        assert time.monotonic() - started < 15, "all of it while the endpoints hang"
        assert sorted(r.json()["n"] for r in received) == list(range(HEALTHY_EVENTS))
        assert p99 < 1.0
        states = await server.endpoints()
        for endpoint in hanging:
            assert endpoint.arrived and not endpoint.answered  # it really hung
            state = states[origin(endpoint.url)]
            assert state["in_flight"] >= 1 and state["set_aside"] >= 1, state
        healthy = states[origin(sink.url())]
        assert healthy["circuit"] == "closed" and healthy["limit"] == 10, healthy
        assert healthy["in_flight"] == 0 and healthy["set_aside"] == 0
    finally:
        assert await server.stop() == 0


async def test_a_hanging_endpoint_that_recovers_gets_each_event_once(
    tmp_path: Path, silent: Callable[[], Any]
):
    """The circuit opens while the endpoint hangs, a failed probe opens it for twice the
    cool-down, and an answered probe closes it; every event is answered exactly once,
    none is dead-lettered."""
    env = {
        "SWITCH_DELIVERY_TIMEOUT": "1",
        "SWITCH_RETRY_SCHEDULE": "1,2,4,8,16,32,64",
        "SWITCH_SHUTDOWN_GRACE": "1",
    }
    server = Served(tmp_path / "s.db", **env)
    await server.start()
    try:
        endpoint = await silent()
        subscriber = await server.subscribe("t", endpoint.url)
        published = await server.publish("t", 30)
        deadline = time.monotonic() + 40
        while len(server.logged("circuit_opened")) < 2:  # opened, then a probe failed
            assert time.monotonic() < deadline, "the circuit did not open and reopen"
            await asyncio.sleep(0.1)
        first, second = server.logged("circuit_opened")
        assert (first["cooldown_seconds"], second["cooldown_seconds"]) == (5, 10)
        assert second["after_probe"] and server.logged("circuit_half_open")
        state = (await server.endpoints())[origin(endpoint.url)]
        assert state["circuit"] in ("open", "half_open") and state["limit"] == 1, state
        assert state["last_error"] == "timeout" and state["set_aside"] >= 1
        status, shown = await server.call("GET", f"/subscribers/{subscriber['id']}", None, True)
        assert status == 200 and shown["endpoint"]["origin"] == origin(endpoint.url)
        assert shown["endpoint"]["circuit"] in ("open", "half_open")
        endpoint.hanging = False  # it recovers
        deadline = time.monotonic() + 60
        while set(endpoint.answered) != set(published):
            assert time.monotonic() < deadline, f"{len(set(endpoint.answered))} answered"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # nothing more comes
        assert Counter(endpoint.answered) == Counter(published), "each answered exactly once"
        assert server.logged("circuit_closed")
        state = (await server.endpoints())[origin(endpoint.url)]
        assert state["circuit"] == "closed" and state["set_aside"] == 0
        print(
            f"\nrecovering endpoint: {len(endpoint.arrived)} requests for {len(published)} "
            f"events, circuit opened {len(server.logged('circuit_opened'))}×"
        )
    finally:
        assert await server.stop() == 0
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


async def test_retry_after_pauses_the_endpoint_not_the_others(tmp_path: Path, sink: Sink):
    """429 with Retry-After: 3: that endpoint gets no request for about 3 s; another
    endpoint's events keep arriving at once."""
    paused, runner = await serve_sink()
    try:
        server = Served(tmp_path / "s.db", SWITCH_SHUTDOWN_GRACE="1")
        await server.start()
        try:
            await server.subscribe("paused", paused.url())
            await server.subscribe("other", sink.url())
            paused.script.append(429)
            paused.response_headers = {"Retry-After": "3"}
            await server.publish("paused", 1)
            [first] = await paused.wait_for(1)
            await server.publish("paused", 5)
            await server.publish("other", 30, rate=10)
            requests = await paused.wait_for(7, timeout=10)
            quiet = requests[1].at - first.at
            print(f"\nRetry-After: 3 → the endpoint's next request came {quiet:.2f} s later")
            assert 2.9 <= quiet <= 4.5
            received = await sink.wait_for(30)
            lateness = [r.at - r.json()["sent"] for r in received]
            assert max(lateness) < 0.5, max(lateness)
            assert len({r.headers["X-Switch-Event-Id"] for r in requests}) == 6
        finally:
            assert await server.stop() == 0
    finally:
        await runner.cleanup()


async def test_jobs_set_aside_spend_no_attempt(start_switchd: StartSwitchd, sink: Sink):
    """A fixed cap of 1: one request at a time; the others wait, in memory and (beyond
    the bound of 2) back in the queue, and each is delivered once, on its first attempt."""
    app = await start_switchd(endpoint_max_in_flight=1, set_aside_max=2)
    await app.add_subscriber(topic="t", target_url=sink.url())
    sink.delay = 0.1
    ids = [(await app.publish("t", {"body": {"n": n}}))[1]["event_id"] for n in range(12)]
    await asyncio.sleep(0.3)
    rows = await app.service.db.fetchall("SELECT rounds, attempts FROM jobs")
    assert rows and {(row["rounds"], row["attempts"]) for row in rows} == {(0, 0)}
    received = await sink.wait_for(12, timeout=20)
    assert Counter(r.headers["X-Switch-Event-Id"] for r in received) == Counter(ids)
    assert sink.max_in_flight == 1
    for event_id in ids:
        event = await event_where(app, event_id, lambda e: e["status"] == "delivered")
        [delivery] = event["subscribers"]
        assert [a["attempt"] for a in delivery["attempts"]] == [1], delivery
    _, body = await app.call("GET", "/endpoints", headers=app.admin)
    [state] = body["endpoints"]
    assert state["limit"] == 1 and state["ceiling"] == 1 and state["set_aside"] == 0


async def test_an_open_circuit_dead_letters_no_sooner_than_the_schedule_would(
    start_switchd: StartSwitchd, sink: Sink
):
    """An endpoint that always fails: the jobs its open circuit keeps are dead-lettered
    once their retry deadline (first attempt + the schedule at its longest) has passed,
    never before, and within one cool-down of it."""
    schedule, cooldown, longest = (0.3, 0.3), 0.4, 0.8
    app = await start_switchd(
        retry_schedule=schedule,
        quick_retries=0,
        circuit_failures=2,
        circuit_cooldown=cooldown,
        circuit_max_cooldown=longest,
    )
    sink.status = 503
    await app.add_subscriber(topic="t", target_url=sink.url())
    for n in range(10):
        await app.publish("t", {"body": {"n": n}})
    deadline = time.monotonic() + 20
    while await app.count("dead_letters") < 10:
        assert time.monotonic() < deadline, "not every job was dead-lettered"
        await asyncio.sleep(0.1)
    rows = await app.service.db.fetchall(
        "SELECT first_attempt_at, dead_at, attempts, last_error FROM dead_letters"
    )
    span = sum(schedule) * 1.2  # the schedule at its longest (+20 % jitter)
    kept = [row for row in rows if row["last_error"].startswith("circuit open since ")]
    assert kept, "the circuit kept some jobs"
    for row in kept:
        waited = row["dead_at"] - row["first_attempt_at"]
        assert span <= waited <= span + longest + 0.5, (waited, row)
        assert row["last_error"].endswith(": HTTP 503: status 503")
    # each job would have cost 3 requests on the schedule alone; the circuit saved most
    assert len(sink.requests) < 3 * 10
    print(f"\nalways failing: {len(sink.requests)} requests for 10 jobs, {len(kept)} kept")


SET_ASIDE_ENV = {
    "SWITCH_ENDPOINT_MAX_IN_FLIGHT": "1",
    "SWITCH_DELIVERY_TIMEOUT": "6",
    "SWITCH_QUICK_RETRIES": "0",
    "SWITCH_SHUTDOWN_GRACE": "0.5",
}


async def stop_with_jobs_set_aside(server: Served, sink: Sink, sig: int) -> list[str]:
    """Six events for an endpoint that takes one request at a time and holds it: one in
    flight, five set aside in memory; then `sig`. Their ids, the one in flight first."""
    await server.start()
    sink.delay = 60
    await server.subscribe("t", sink.url())
    ids = await server.publish("t", 6)
    [first] = await sink.wait_for(1)
    deadline = time.monotonic() + 10
    while (state := (await server.endpoints())[origin(sink.url())])["set_aside"] < 5:
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert (state["in_flight"], state["set_aside"]) == (1, 5), state
    assert await server.stop(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    sink.delay = 0
    in_flight = first.headers["X-Switch-Event-Id"]
    return [in_flight, *(i for i in ids if i != in_flight)]


def delivered_once_more(sink: Sink, ids: list[str]) -> None:
    """Each event reached the sink once after the stop; the one cut short in flight had
    reached it once before too."""
    counts = Counter(r.headers["X-Switch-Event-Id"] for r in sink.requests)
    assert counts == Counter({ids[0]: 2, **dict.fromkeys(ids[1:], 1)}), counts


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_jobs_set_aside_survive_sigterm_and_kill(tmp_path: Path, sink: Sink, sig: int):
    """Embedded queue: SIGTERM makes the jobs set aside due at once, rounds and attempts
    untouched; after kill -9 their leases expire. Nothing is lost."""
    env = {**SET_ASIDE_ENV, "SWITCH_LEASE_SECONDS": "10"}
    ids = await stop_with_jobs_set_aside(Served(tmp_path / "s.db", **env), sink, sig)
    stopped = time.time()
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT run_at, rounds, attempts FROM jobs").fetchall()
    assert len(rows) == 6 and {(rounds, attempts) for _, rounds, attempts in rows} == {(0, 0)}
    if sig == signal.SIGTERM:
        assert max(run_at for run_at, _, _ in rows) <= stopped  # released: due now
    else:
        assert min(run_at for run_at, _, _ in rows) > stopped  # still leased
    server = Served(tmp_path / "s.db", **env)
    await server.start()
    try:
        await sink.wait_for(7, timeout=20)
        await asyncio.sleep(0.5)
        delivered_once_more(sink, ids)
    finally:
        assert await server.stop() == 0


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("SWITCH_CIRCUIT_FAILURES", "0", "an integer 1..1000"),
        ("SWITCH_CIRCUIT_COOLDOWN", "soon", "seconds, 0.1..3600"),
        ("SWITCH_CIRCUIT_MAX_COOLDOWN", "1", "at least SWITCH_CIRCUIT_COOLDOWN (5 s)"),
        ("SWITCH_SET_ASIDE_MAX", "lots", "an integer 0..1000000"),
        ("SWITCH_ENDPOINT_MAX_IN_FLIGHT", "-3", "an integer 0..10000 (0: no fixed cap)"),
    ],
)
def test_a_bad_isolation_setting_is_one_line_and_exit_2(variable: str, raw: str, expected: str):
    result = subprocess.run(
        [sys.executable, "-m", "switchd", "serve"],
        capture_output=True,
        text=True,
        env={**clean_environ(), "SWITCH_JWT_SECRET": SECRET, variable: raw},
        timeout=30,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"switchd: config: {variable}=") and line.endswith(expected), line
    assert f" is invalid: expected {expected}" in line
