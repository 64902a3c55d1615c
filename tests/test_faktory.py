"""switchd on Faktory: seed-compatible jobs, retries, dead letters, outages, handshake.

Every test runs twice: against FaktoryDouble (tests/faktory_double.py, a test double, not
Faktory) and against a real Faktory: the one at FAKTORY_URL when that is set, else one the
session starts from ../shared/bin/faktory (tests/real_faktory.py); skipped when neither is
there. The real server sits behind a TCP proxy so that outage tests can cut it off. Each
test uses its own queue name, and checks Faktory's shared sets (Busy, Retries, Dead) by
their change only, on a server it finds idle: the session's own is restarted afresh when
an earlier test left reservations, retries or scheduled jobs behind.

The real server's clock is not scaled: a reservation lasts at least 60 s and a retry waits
15 s or more. Tests whose subject is not that backoff hurry their queue's retries along
(MUTATE requeue), so that the real variants take minutes, not quarter hours.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import faktory as pypi_faktory
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from switchd.config import Settings
from switchd.models import Outcome
from switchd.queue.faktory import PUSH_TIMEOUT, reserve_for
from switchd.queue.faktory_protocol import (
    HANDSHAKE_TIMEOUT,
    FaktoryAddress,
    FaktoryAuthError,
    FaktoryConnection,
    FaktoryReplyError,
    FaktoryUnavailable,
)
from switchd.queue.fallback import FallbackQueue
from switchd.service import Switchd
from tests.conftest import FAST, SECRET, Received, Running, Sink, StartSwitchd, free_port
from tests.faktory_double import FaktoryDouble, FaktoryProxy
from tests.real_faktory import RealFaktory

pytestmark = pytest.mark.timeout(300)  # real Faktory reservations last 60 s at least

REAL_URL = os.environ.get("FAKTORY_URL")
DOUBLE_PASSWORD = "double-secret"
BACKOFF_SCALE = 0.01  # the double's first retry comes after 0.15..0.45 s instead of 15..45 s
RESERVATION_SCALE = 0.05  # the double's 60 s minimum reservation lasts 3 s
# A job Faktory reserved for a connection that broke comes back after its reservation
# (60 s, reaped every 15 s) as a retry, which the tests hurry along.
LOST_RESERVATION_WAIT = 60 + 15 + 20
HELD_BACK = 1.0  # seconds a real Faktory retry is seen not to come before it is hurried
SEED_FILTER = 'data["body"]["x"] == 1 and data["headers"]["y"] == "z"'


class Faktory:
    """The Faktory a test talks to: the double, or a real one behind a cuttable proxy."""

    def __init__(self, url: str, double: FaktoryDouble | None, proxy: FaktoryProxy | None):
        self.url = url
        self.double = double
        self.proxy = proxy

    @property
    def real(self) -> bool:
        return self.double is None

    async def stop(self) -> None:
        """Make Faktory unreachable: refuse connections and cut the open ones."""
        if self.double is not None:
            await self.double.stop()
        elif self.proxy is not None:
            await self.proxy.stop()
        else:
            pytest.skip("a tcp+tls FAKTORY_URL cannot be cut by the test proxy")

    def freeze(self) -> None:
        """Make Faktory hang: connections stay open and nothing comes back."""
        server = self.double or self.proxy
        if server is None:
            pytest.skip("a tcp+tls FAKTORY_URL cannot be frozen by the test proxy")
        server.freeze()

    def thaw(self) -> None:
        server = self.double or self.proxy
        assert server is not None
        server.thaw()

    async def start(self) -> None:
        """Bring Faktory back on the same address."""
        server = self.double or self.proxy
        assert server is not None
        await server.start()

    def retry_within(self, failures: int) -> float:
        """Seconds within which Faktory re-offers a job after its `failures`-th FAIL."""
        n = failures - 1
        worst = n**4 + 15 + 29 * (n + 1)
        return worst * BACKOFF_SCALE + 5 if self.double else worst + 5 + 15  # scanner, slack

    def expiry_within(self, reserve_for: int) -> float:
        """Seconds within which Faktory expires a reservation of `reserve_for` seconds."""
        if self.double:
            return reserve_for * RESERVATION_SCALE + 0.5
        return reserve_for + 15 + 1  # Faktory reaps expired reservations every 15 s

    async def connect(self, wid: str | None = None) -> FaktoryConnection:
        return await FaktoryConnection.open(FaktoryAddress.parse(self.url), wid=wid)

    async def sets(self) -> Counter[str]:
        """Sizes of the queues and of Faktory's Busy, Retries and Dead sets."""
        return await faktory_sets(self.url)

    async def hurry_retries(self, queue: str) -> None:
        """Move the jobs of `queue` waiting in Faktory's Retries set back to their queue now
        (MUTATE requeue), cutting a real retry's backoff short. The double's backoff is
        scaled down instead: nothing to do there."""
        if self.double is not None:
            return
        connection = await self.connect()
        try:
            pattern = f'*"queue":"{queue}"*'  # a Redis MATCH pattern over the stored job
            await connection.call(
                "MUTATE", {"cmd": "requeue", "target": "retries", "filter": {"regexp": pattern}}
            )
        finally:
            await connection.close()

    async def wait_hurrying(
        self, condition: Callable[[], bool], queue: str, timeout: float, what: str
    ) -> None:
        """Wait until `condition()`, hurrying the retries of `queue` along meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await self.hurry_retries(queue)
            await asyncio.sleep(0.25)

    async def retried(self, sink: Sink, seen: int, queue: str) -> list[Received]:
        """Wait for the request after the sink's `seen` first, which only a Faktory retry of
        the job of `queue` brings, and check that Faktory held it back: the double by its
        scaled backoff, the real server for HELD_BACK s before the retry is hurried."""
        await sink.wait_for(seen)
        if self.double is not None:
            requests = await sink.wait_for(seen + 1, timeout=self.retry_within(1) + 10)
            assert requests[seen].at - requests[seen - 1].at >= 15 * BACKOFF_SCALE * 0.9
            return requests
        await asyncio.sleep(HELD_BACK)
        assert len(sink.requests) == seen, "retried before Faktory's backoff"
        await self.wait_hurrying(lambda: len(sink.requests) > seen, queue, 30, "a retry")
        return sink.requests


async def faktory_sets(url: str) -> Counter[str]:
    """Sizes of the queues and of the Busy, Retries, Scheduled and Dead sets of a Faktory."""
    connection = await FaktoryConnection.open(FaktoryAddress.parse(url))
    try:
        faktory = (await connection.info())["faktory"]
    finally:
        await connection.close()
    sizes = Counter({k: int(v.get("size", 0)) for k, v in faktory["tasks"].items()})
    sizes.update(faktory.get("queues", {}))
    return sizes


async def idle_real_faktory(request: pytest.FixtureRequest) -> str:
    """The URL of a real Faktory holding no reservation, retry or scheduled job, so that
    the set changes a test sees are its own: FAKTORY_URL's, which must be idle, or the
    session's own, restarted afresh when an earlier test left any."""
    url = REAL_URL
    server: RealFaktory | None = None if url else request.getfixturevalue("real_faktory")
    if server is not None:
        url = server.url
    assert url is not None
    sets = await faktory_sets(url)
    pending = {name: sets[name] for name in ("Busy", "Retries", "Scheduled") if sets[name]}
    if pending and server is None:
        raise AssertionError(f"the Faktory at FAKTORY_URL is not idle: {pending}")
    if pending and server is not None:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        url = server.url
    return url


@pytest.fixture(params=["double", "real"])
async def faktory(request: pytest.FixtureRequest) -> AsyncIterator[Faktory]:
    if request.param == "real":
        url = await idle_real_faktory(request)
        address = FaktoryAddress.parse(url)
        if address.tls:
            yield Faktory(url, None, None)
            return
        proxy = FaktoryProxy(address.host, address.port)
        await proxy.start()
        auth = f":{quote(address.password, safe='')}@" if address.password else ""
        yield Faktory(f"tcp://{auth}127.0.0.1:{proxy.port}", None, proxy)
        await proxy.stop()
        return
    double = FaktoryDouble(
        DOUBLE_PASSWORD, backoff_scale=BACKOFF_SCALE, reservation_scale=RESERVATION_SCALE
    )
    await double.start()
    yield Faktory(double.url, double, None)
    await double.stop()


@pytest.fixture
def queue_name() -> str:
    return f"switchd-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def on_faktory(
    faktory: Faktory, start_switchd: StartSwitchd, queue_name: str
) -> Callable[..., Any]:
    """Start switchd on the Faktory under test (its own queue, the shared test database).
    Faktory is set up first so that it outlives the switchd instances."""

    async def start(**overrides: Any) -> Running:
        return await start_switchd(
            faktory_url=faktory.url, production_queue=queue_name, **overrides
        )

    return start


def fallback(app: Running) -> FallbackQueue:
    queue = app.service.queue
    assert isinstance(queue, FallbackQueue)
    return queue


async def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_rows(app: Running, table: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await app.count(table) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{table} has fewer than {count} rows after {timeout} s")
        await asyncio.sleep(0.05)


async def settle_sets(faktory: Faktory, before: Counter[str], **expected: int) -> Counter[str]:
    """Wait until the named sizes changed by `expected` since `before`; return the sizes."""
    deadline = time.monotonic() + 10
    while True:
        sizes = await faktory.sets()
        changes = {name: sizes[name] - before[name] for name in expected}
        if changes == expected:
            return sizes
        if time.monotonic() > deadline:
            raise AssertionError(f"Faktory sets changed by {changes}, expected {expected}")
        await asyncio.sleep(0.1)


def isoparse(text: str) -> float:
    """Seconds since the epoch of a time as Faktory writes it (RFC 3339, UTC)."""
    return datetime.fromisoformat(text).timestamp()


def b64(payload: dict[str, Any]) -> str:
    return base64.b64encode(orjson.dumps(payload)).decode()


# -- the protocol -------------------------------------------------------------------------


async def test_client_push_bulk_fetch_ack_beat_info(faktory: Faktory, queue_name: str):
    wid = uuid.uuid4().hex[:16]
    connection = await faktory.connect(wid)
    try:
        jobs = [
            {"jid": uuid.uuid4().hex, "jobtype": "pubsub", "queue": queue_name, "args": [i]}
            for i in range(2)
        ]
        refused = await connection.push_bulk([*jobs, {"jid": "short", "jobtype": "x", "args": []}])
        assert list(refused) == ["short"]  # per-job errors come back by jid
        assert (await faktory.sets())[queue_name] == 2
        fetched = [await connection.fetch([queue_name]) for _ in jobs]
        assert sorted(job["args"][0] for job in fetched if job) == [0, 1]
        assert await connection.beat(wid) == "running"
        for job in fetched:
            assert job is not None
            await connection.ack(job["jid"])
        assert (await faktory.sets())[queue_name] == 0
    finally:
        await connection.close()


async def fetch_again(
    faktory: Faktory,
    connection: FaktoryConnection,
    wid: str,
    queue: str,
    within: float,
    hurry: bool = False,
) -> dict[str, Any] | None:
    """FETCH from `queue` until a job comes (None after `within` s), with a BEAT before each
    FETCH: Faktory closes the connections of a worker silent for 60 s. `hurry`: hurry the
    queue's retries along meanwhile."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await connection.beat(wid)
        if hurry:
            await faktory.hurry_retries(queue)
        job = await connection.fetch([queue])  # the server holds it up to 2 s
        if job is not None:
            return job
    return None


async def test_fail_is_retried_with_faktory_backoff_and_history(faktory: Faktory, queue_name: str):
    wid = uuid.uuid4().hex[:16]
    connection = await faktory.connect(wid)
    try:
        await connection.push({"jid": uuid.uuid4().hex, "jobtype": "t", "queue": queue_name,
                               "args": [], "retry": 3})  # fmt: skip
        job = await connection.fetch([queue_name])
        assert job is not None and "failure" not in job
        await connection.fail(job["jid"], "HTTP 503", "HTTP 503: busy", ["event_id=e1"])
        if faktory.real:  # held back (this FETCH waits 2 s), then hurried along
            assert await connection.fetch([queue_name]) is None
        within = faktory.retry_within(1)
        again = await fetch_again(faktory, connection, wid, queue_name, within, hurry=True)
        assert again is not None and again["jid"] == job["jid"]
        failure = again["failure"]
        backoff = isoparse(failure["next_at"]) - isoparse(failure["failed_at"])
        assert backoff >= 15 * (BACKOFF_SCALE if faktory.double else 1) * 0.9
        assert failure["retry_count"] == 0 and failure["errtype"] == "HTTP 503"
        assert failure["message"] == "HTTP 503: busy" and failure["backtrace"] == ["event_id=e1"]
        await connection.ack(again["jid"])
    finally:
        await connection.close()


async def test_expired_reservation_counts_as_a_failure(faktory: Faktory, queue_name: str):
    wid = uuid.uuid4().hex[:16]
    connection = await faktory.connect(wid)
    try:
        await connection.push({"jid": uuid.uuid4().hex, "jobtype": "t", "queue": queue_name,
                               "args": [], "reserve_for": 1, "retry": 2})  # fmt: skip
        assert await connection.fetch([queue_name]) is not None  # reserved, never settled
        within = faktory.expiry_within(60) + faktory.retry_within(1)
        again = await fetch_again(faktory, connection, wid, queue_name, within, hurry=True)
        assert again is not None, "the expired reservation was not retried"
        assert again["failure"]["errtype"] == "ReservationExpired"
        assert again["failure"]["retry_count"] == 0
        await connection.ack(again["jid"])
    finally:
        await connection.close()


# -- switchd's jobs -------------------------------------------------------------------------


async def test_round_trip_with_seed_job_layout(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    producer = await on_faktory(consumer_concurrency=0)
    subscriber = await producer.add_subscriber(topic="orders", target_url=sink.url(), secret=True)
    payload = {"body": {"id": 7}, "headers": {"X-Trace": "abc"}}
    status, published = await producer.publish("orders", payload)
    assert status == 202 and published["matched"] == 1

    # The job as any Faktory worker sees it: the seed's args, switchd's ids in custom.
    connection = await faktory.connect(uuid.uuid4().hex[:16])
    try:
        job = await connection.fetch([queue_name])
        assert job is not None
        assert job["jobtype"] == "pubsub" and job["queue"] == queue_name
        assert job["args"] == [sink.url(), "True", b64(payload)]
        assert job["custom"] == {"event_id": published["event_id"],
                                 "subscriber_id": subscriber["id"],
                                 "author": "svc", "topic": "orders"}  # fmt: skip
        assert job["retry"] == 25
        assert job["reserve_for"] == reserve_for(producer.service.settings) == 60
        # Hand it back for switchd to deliver (a fresh jid, as switchd's release does).
        await connection.push({**job, "jid": uuid.uuid4().hex})
        await connection.ack(job["jid"])
    finally:
        await connection.close()

    before = await faktory.sets()
    consumer = await on_faktory(consumer_concurrency=2)
    [request] = await sink.wait_for(1)
    assert request.headers["X-Switch-Event-Id"] == published["event_id"]
    assert request.headers["X-Trace"] == "abc" and request.json() == {"id": 7}
    assert Webhook(subscriber["secret"]).verify(request.body, dict(request.headers)) == {"id": 7}
    await settle_sets(faktory, before, **{queue_name: -1, "Busy": 0, "Retries": 0, "Dead": 0})
    assert await consumer.count("jobs") == 0 and await consumer.count("events") == 0
    assert fallback(producer).status()["pushed"] == 1
    assert fallback(producer).spilled == 0


async def test_faktory_queue_alone_is_a_job_queue(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=0)
    queue = fallback(app).faktory
    await app.add_subscriber(topic="t", target_url=sink.url())
    _, published = await app.publish("t", {"body": {"n": 1}})
    before = await faktory.sets()
    job = await asyncio.wait_for(queue.next(), 10)
    assert job.event_id == published["event_id"] and job.payload == {"body": {"n": 1}}
    assert job.rounds == 0 and job.target_url == sink.url()
    outcome = Outcome("delivered", status=200, requests=1, finished_at=time.time())
    assert await queue.settle(job, outcome) == "done"
    await settle_sets(faktory, before, **{queue_name: -1, "Busy": 0})


def _old_worker(url: str, queue: str) -> Any:
    """A PyPI `faktory` worker, made on the main thread (it installs a SIGTERM handler)."""
    previous = signal.getsignal(signal.SIGTERM)
    worker = pypi_faktory.Worker(faktory=url, queues=[queue], concurrency=2, use_threads=True)
    signal.signal(signal.SIGTERM, previous)
    return worker


def _run_old_worker(worker: Any, done: Callable[[], bool], timeout: float) -> None:
    """Tick the worker until `done()` and nothing is left to ACK, as its run() loop would."""
    worker.faktory.connect(worker_id=worker.worker_id)
    worker._last_heartbeat = datetime.now()  # as run() sets it
    deadline = time.monotonic() + timeout
    try:
        while not (done() and not worker._pending) and time.monotonic() < deadline:
            worker.tick()
    finally:
        worker.faktory.disconnect()
        worker.executor.shutdown(wait=True)


async def test_old_style_worker_processes_switchd_jobs(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    producer = await on_faktory(consumer_concurrency=0)
    await producer.add_subscriber(topic="t", target_url=sink.url("/old"))
    status, _ = await producer.publish("t", {"body": {"n": 1}, "http_method": "PUT"})
    assert status == 202
    received: list[tuple[str, str, str]] = []

    def seed_worker(target_url: str, filter_expression: str, payload_base64: str) -> None:
        """What the old Python worker did with a job: decode args[2], send the request."""
        payload = orjson.loads(base64.b64decode(payload_base64))
        request = urllib.request.Request(
            target_url, data=orjson.dumps(payload["body"]), method=payload["http_method"]
        )
        urllib.request.urlopen(request, timeout=5).read()
        received.append((target_url, filter_expression, payload_base64))

    before = await faktory.sets()
    worker = _old_worker(faktory.url, queue_name)
    worker.register("pubsub", seed_worker)
    await asyncio.to_thread(_run_old_worker, worker, lambda: bool(received), 20)
    assert received == [(sink.url("/old"), "True", b64({"body": {"n": 1}, "http_method": "PUT"}))]
    [request] = sink.requests
    assert request.method == "PUT" and request.json() == {"n": 1}
    await settle_sets(faktory, before, **{queue_name: -1, "Busy": 0, "Retries": 0, "Dead": 0})


async def test_old_format_jobs_from_the_old_producer(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    matching = {"body": {"x": 1}, "headers": {"y": "z"}, "http_method": "PATCH"}
    old_jobs = [
        [sink.url("/match"), SEED_FILTER, b64(matching)],
        [sink.url("/no-match"), SEED_FILTER, b64({"body": {"x": 2}, "headers": {"y": "z"}})],
        [sink.url("/broken"), "True", "not base64!"],
    ]

    def produce() -> None:
        with pypi_faktory.connection(faktory.url) as client:
            for args in old_jobs:
                assert client.queue("pubsub", args=args, queue=queue_name, retry=25)

    before = await faktory.sets()
    await asyncio.to_thread(produce)
    app = await on_faktory(consumer_concurrency=2)
    [request] = await sink.wait_for(1)
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    await asyncio.sleep(0.2)
    assert [r.path for r in sink.requests] == ["/match"]
    assert request.method == "PATCH" and request.json() == {"x": 1}
    dead = await app.service.db.fetchone("SELECT target_url, last_error FROM dead_letters")
    assert dead is not None and dead[0] == sink.url("/broken") and "base64" in dead[1]


async def test_transient_failure_is_failed_and_retried_by_faktory(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=2)
    sink.script.extend([503, 503, 503])  # one round: the first try and two quick retries
    await app.add_subscriber(topic="t", target_url=sink.url())
    before = await faktory.sets()
    _, published = await app.publish("t", {"body": {"n": 1}})
    requests = await faktory.retried(sink, 3, queue_name)  # FAILed, retried by Faktory
    assert [r.headers["X-Switch-Event-Id"] for r in requests] == [published["event_id"]] * 4
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    await asyncio.sleep(0.3)
    assert len(sink.requests) == 4 and await app.count("dead_letters") == 0


async def test_last_allowed_retry_goes_to_switchd_dead_letters(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=2, faktory_retry=1, quick_retries=1)
    sink.status = 500
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    before = await faktory.sets()
    _, published = await app.publish("t", {"body": {"n": 1}})
    await faktory.retried(sink, 2, queue_name)  # 2 rounds of 2 requests
    await sink.wait_for(4)
    await wait_for_rows(app, "dead_letters", 1)
    row = await app.service.db.fetchone(
        "SELECT event_id, subscriber_id, last_status, attempts, payload FROM dead_letters"
    )
    assert row is not None
    assert (row[0], row[1], row[2]) == (published["event_id"], subscriber["id"], 500)
    assert row[3] == 3  # earlier round counted as one request (a lower bound), + this round's 2
    assert orjson.loads(row[4]) == {"body": {"n": 1}}
    # ACKed, not in Faktory's dead set: dead letters live in one place.
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    await asyncio.sleep(0.3)
    assert len(sink.requests) == 4


async def test_permanent_failure_is_dead_lettered_at_once(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=1)
    sink.status = 400
    await app.add_subscriber(topic="t", target_url=sink.url())
    before = await faktory.sets()
    await app.publish("t", {"body": {}})
    await sink.wait_for(1)
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    assert await app.count("dead_letters") == 1 and len(sink.requests) == 1


# -- outages --------------------------------------------------------------------------------


async def test_faktory_stopped_mid_run_every_event_is_delivered(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=4)
    queue = fallback(app)
    await app.add_subscriber(topic="t", target_url=sink.url())
    results: list[tuple[int, str]] = []

    async def publish_steadily(count: int) -> None:
        for i in range(count):
            status, body = await app.publish("t", {"body": {"i": i}})
            results.append((status, body.get("event_id", "")))
            await asyncio.sleep(0.02)

    publisher = asyncio.create_task(publish_steadily(150))
    await asyncio.sleep(0.8)
    await faktory.stop()
    await wait_until(lambda: queue.status()["faktory"] == "down", 5, "Faktory seen down")
    await asyncio.sleep(1.0)
    degraded = queue.status()
    status, ready = await app.call("GET", "/readyz")
    assert status == 200, ready  # degraded but serving is ready
    assert ready["queue"]["backend"] == "faktory" and ready["queue"]["faktory"] == "down"
    await faktory.start()
    await publisher
    assert [s for s, _ in results] == [202] * 150
    published = {event_id for _, event_id in results}
    await faktory.wait_hurrying(
        lambda: {r.headers["X-Switch-Event-Id"] for r in sink.requests} >= published,
        queue_name,
        LOST_RESERVATION_WAIT if faktory.real else 20,
        "every event to be delivered",
    )
    delivered = Counter(r.headers["X-Switch-Event-Id"] for r in sink.requests)
    print(f"outage: spilled={queue.spilled} duplicates={sum(delivered.values()) - len(published)}"
          f" degraded_status={degraded}")  # fmt: skip
    assert degraded["faktory"] == "down" and degraded["spilled"] > 0
    # Only spilled events were stored locally, with the payload their local jobs need; the
    # delivery log holds the others too, without a payload (SWITCH_LOG_PAYLOADS is false).
    stored = await app.service.db.fetchone("SELECT COUNT(*) FROM events WHERE payload != x''")
    assert stored is not None and stored[0] == queue.spilled


async def metrics_text(app: Any) -> str:
    async with app.client.get(app.url + "/metrics") as response:
        return await response.text()


async def test_jobs_flow_through_faktory_again_when_it_returns(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    await faktory.stop()
    app = await on_faktory(consumer_concurrency=2)  # starts although Faktory is down
    queue = fallback(app)
    assert queue.status()["faktory"] == "down"
    assert (await app.call("GET", "/readyz"))[0] == 200
    assert "switchd_faktory_up 0.0" in await metrics_text(app)
    await app.add_subscriber(topic="t", target_url=sink.url())
    for i in range(3):
        assert (await app.publish("t", {"body": {"i": i}}))[0] == 202
    await sink.wait_for(3)  # delivered from the local queue by this instance
    assert queue.spilled == 3 and await app.count("events") == 3

    await faktory.start()
    await wait_until(lambda: queue.status()["faktory"] == "up", 10, "Faktory seen up again")
    pushed = queue.status()["pushed"]
    before = await faktory.sets()
    for i in range(3, 6):
        assert (await app.publish("t", {"body": {"i": i}}))[0] == 202
    await sink.wait_for(6)
    assert queue.status()["pushed"] == pushed + 3 and queue.spilled == 3
    text = await metrics_text(app)
    assert "switchd_faktory_up 1.0" in text and "switchd_faktory_spilled_jobs 3.0" in text
    assert await app.count("events") == 3 and await app.count("jobs") == 0
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0})
    assert sorted(r.json()["i"] for r in sink.requests) == list(range(6))


async def test_faktory_that_stops_answering_costs_one_push_timeout(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=2)
    queue = fallback(app)
    await app.add_subscriber(topic="t", target_url=sink.url())
    faktory.freeze()
    timings = []
    for i in range(3):
        started = time.monotonic()
        assert (await app.publish("t", {"body": {"i": i}}))[0] == 202
        timings.append(time.monotonic() - started)
    print(f"hung Faktory: publish seconds {[round(t, 3) for t in timings]}")
    assert PUSH_TIMEOUT <= timings[0] < PUSH_TIMEOUT + 1  # the push timed out, then spilled
    assert max(timings[1:]) < 0.5  # Faktory is known down: straight to the local queue
    assert queue.spilled == 3
    await sink.wait_for(3)
    await asyncio.sleep(HANDSHAKE_TIMEOUT + 1)
    assert queue.status()["faktory"] == "down"  # handshakes time out: no flapping back up
    faktory.thaw()
    await wait_until(lambda: queue.status()["faktory"] == "up", 20, "Faktory seen up again")
    assert (await app.publish("t", {"body": {"i": 3}}))[0] == 202
    timeout = LOST_RESERVATION_WAIT if faktory.real else 20
    await faktory.wait_hurrying(lambda: len(sink.requests) >= 4, queue_name, timeout, "event 3")
    assert queue.spilled == 3 and queue.status()["pushed"] == 1


async def test_wrong_password_is_a_one_line_start_up_error(faktory: Faktory, tmp_path: Path):
    address = FaktoryAddress.parse(faktory.url)
    if faktory.real and not address.password:
        pytest.skip("the real Faktory at FAKTORY_URL has no password")
    scheme = "tcp+tls" if address.tls else "tcp"
    wrong = f"{scheme}://:wrong-password@{address.host}:{address.port}"
    with pytest.raises(FaktoryAuthError, match="rejected the password"):
        await FaktoryConnection.open(FaktoryAddress.parse(wrong))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCH_", "FAKTORY_"))}
    env.update(
        FAKTORY_URL=wrong,
        SWITCH_JWT_SECRET=SECRET,
        SWITCH_DB_NAME=str(tmp_path / "s.db"),
        SWITCH_SERVER_HOST="127.0.0.1",
        SWITCH_SERVER_PORT=str(free_port()),
        SWITCH_LOG_FORMAT="json",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchd", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    text = stderr.decode()
    assert process.returncode not in (0, None)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if not line.startswith("{")]  # not a log line
    assert len(errors) == 1, text
    assert "password" in errors[0] and "wrong-password" not in text
    print(f"start-up error (exit {process.returncode}): {errors[0]}")


async def test_quiet_then_terminate_stop_fetching(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=2)
    worker = fallback(app).faktory
    worker.heartbeat_seconds = 0.2
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {"n": 0}})
    await sink.wait_for(1)

    async def signal_worker(state: str) -> None:  # as Faktory's web UI would
        connection = await faktory.connect(worker.wid)
        try:
            await connection.beat(worker.wid, current_state=state)
        finally:
            await connection.close()

    await signal_worker("quiet")
    await wait_until(lambda: worker.worker_state == "quiet", 5, "the quiet state")
    await asyncio.sleep(2.5)  # let FETCHes already waiting on the server run out
    await app.publish("t", {"body": {"n": 1}})
    await asyncio.sleep(2.5)
    assert len(sink.requests) == 1 and (await faktory.sets())[queue_name] == 1

    await signal_worker("terminate")
    await wait_until(lambda: worker.worker_state == "terminate", 5, "the terminate state")
    await asyncio.sleep(1.5)
    assert len(sink.requests) == 1
    assert (await app.call("GET", "/readyz"))[0] == 200  # publishing still works
    await on_faktory(consumer_concurrency=1)  # a running instance takes the job
    await sink.wait_for(2)


async def test_shutdown_puts_unfinished_jobs_back_in_faktory(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink, tmp_path: Path
):
    settings = Settings(**{"jwt_secret": SECRET, "db_name": str(tmp_path / "own.db"), **FAST,
                           "shutdown_grace": 0.3, "consumer_concurrency": 1,
                           "faktory_url": faktory.url, "production_queue": queue_name})  # fmt: skip
    service = Switchd(settings)
    await service.start()
    try:
        subscriber = await service.store.create({"topic": "t", "target_url": sink.url()})
        await service.registry.reload()
        sink.delay = 3.0
        published = await service.publish("t", "svc", {"body": {}})
        await sink.wait_for(1)
        before = await faktory.sets()
    finally:
        await service.stop()
    sizes = await settle_sets(faktory, before, **{queue_name: 1, "Busy": -1, "Retries": 0})
    assert sizes[queue_name] == 1  # back in the queue at once, no retry spent
    connection = await faktory.connect(uuid.uuid4().hex[:16])
    try:
        job = await connection.fetch([queue_name])
        assert job is not None and "failure" not in job
        assert job["custom"]["event_id"] == published["event_id"]
        assert job["custom"]["subscriber_id"] == subscriber.id
        await connection.ack(job["jid"])
    finally:
        await connection.close()


async def test_several_instances_share_one_faktory_queue(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    first = await on_faktory(consumer_concurrency=2)
    second = await on_faktory(consumer_concurrency=2)
    assert fallback(first).faktory.wid != fallback(second).faktory.wid
    sink.delay = 0.1
    await first.add_subscriber(topic="t", target_url=sink.url())
    await second.service.registry.reload()
    for i in range(20):
        app = first if i % 2 else second
        assert (await app.publish("t", {"body": {"i": i}}))[0] == 202
    requests = await sink.wait_for(20)
    await asyncio.sleep(0.3)
    assert sorted(r.json()["i"] for r in requests) == list(range(20))  # each exactly once
    if faktory.double is not None:
        assert faktory.double.commands["ACK"] == 20


# -- grouped pushes ------------------------------------------------------------------------


def publish_together(app: Running, topics: list[str]) -> Any:
    """Publish one event per topic in the same turn of the event loop: the first finds no
    PUSHB out and sends its own at once, the others share the next one."""
    return asyncio.gather(
        *(app.service.publish(topic, "svc", {"body": {"i": i}}) for i, topic in enumerate(topics))
    )


async def test_concurrent_publishes_share_one_pushb(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=0)
    queue = fallback(app)
    urls = [sink.url("/a"), sink.url("/b")]
    for url in urls:
        await app.add_subscriber(topic="t", target_url=url)
    before, groups = await faktory.sets(), queue.faktory.pushes.groups
    published = await publish_together(app, ["t"] * 5)
    assert queue.faktory.pushes.groups == groups + 2 == queue.status()["pushbs"]
    if faktory.double is not None:
        assert faktory.double.commands["PUSHB"] == 2
    assert queue.status()["pushed"] == 10 and queue.spilled == 0
    await settle_sets(faktory, before, **{queue_name: 10})
    connection = await faktory.connect(uuid.uuid4().hex[:16])
    try:
        jobs = [await connection.fetch([queue_name]) for _ in range(10)]
        for job in jobs:
            assert job is not None
            await connection.ack(job["jid"])
    finally:
        await connection.close()
    pushed = Counter((job["custom"]["event_id"], job["args"][0]) for job in jobs if job)
    assert pushed == Counter((p["event_id"], url) for p in published for url in urls)


async def test_a_slow_pushb_holds_up_no_other_publish(
    start_switchd: StartSwitchd, queue_name: str, sink: Sink
):
    """Double only (it counts the commands it received): while Faktory is slow to answer
    one PUSHB, the next publish goes out in another, on a connection of its own."""
    double = FaktoryDouble(DOUBLE_PASSWORD)
    await double.start()
    try:
        app = await start_switchd(
            faktory_url=double.url, production_queue=queue_name, consumer_concurrency=0
        )
        await app.add_subscriber(topic="t", target_url=sink.url())
        double.freeze(only="PUSHB")
        first = asyncio.create_task(app.publish("t", {"body": {"i": 0}}))
        await wait_until(lambda: double.commands["PUSHB"] == 1, 4, "the first PUSHB")
        second = asyncio.create_task(app.publish("t", {"body": {"i": 1}}))
        await wait_until(lambda: double.commands["PUSHB"] == 2, 4, "a second PUSHB beside it")
        double.thaw()
        assert [status for status, _ in await asyncio.gather(first, second)] == [202] * 2
        assert fallback(app).status()["pushed"] == 2 and fallback(app).spilled == 0
        assert sorted(job["args"][0] for job in double.queues[queue_name]) == [sink.url()] * 2
    finally:
        await double.stop()


async def test_a_refused_job_spills_only_its_own_publish(
    start_switchd: StartSwitchd, queue_name: str, sink: Sink
):
    """Double only (a real Faktory refuses no job switchd writes): Faktory's refusal of
    one job of a group sends that job's publish, and it alone, to the local queue."""
    double = FaktoryDouble(DOUBLE_PASSWORD)
    double.refuse = lambda job: "refused by the test" if job["custom"]["topic"] == "no" else None
    await double.start()
    try:
        app = await start_switchd(
            faktory_url=double.url, production_queue=queue_name, consumer_concurrency=0
        )
        for topic in ("yes", "no"):
            await app.add_subscriber(topic=topic, target_url=sink.url("/" + topic))
        published = await publish_together(app, ["yes", "yes", "no", "yes"])
        assert double.commands["PUSHB"] == 2  # the first alone, then the others together
        queue = fallback(app)
        assert queue.spilled == 1 and queue.status()["pushed"] == 3
        in_faktory = {job["custom"]["event_id"] for job in double.queues[queue_name]}
        assert in_faktory == {published[i]["event_id"] for i in (0, 1, 3)}
        local = await app.service.db.fetchall("SELECT event_id, target_url FROM jobs")
        assert [tuple(row) for row in local] == [(published[2]["event_id"], sink.url("/no"))]
    finally:
        await double.stop()


async def test_a_pushb_cut_off_spills_its_whole_group_and_loses_nothing(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    app = await on_faktory(consumer_concurrency=2)
    queue = fallback(app)
    await app.add_subscriber(topic="t", target_url=sink.url())
    await publish_together(app, ["t", "t"])  # two PUSHBs at once: two pooled connections
    await sink.wait_for(2)
    groups = queue.faktory.pushes.groups
    faktory.freeze()
    publishing = publish_together(app, ["t"] * 4)
    await wait_until(lambda: queue.faktory.pushes.groups == groups + 2, 4, "the group's PUSHB")
    if faktory.double is not None:
        await wait_until(lambda: faktory.double.commands["PUSHB"] == 4, 4, "them to arrive")
    else:
        await asyncio.sleep(0.2)  # written into the frozen proxy
    await faktory.stop()
    published = await asyncio.wait_for(publishing, 10)
    assert queue.spilled == 4 and queue.status()["pushed"] == 2
    faktory.thaw()
    await faktory.start()
    events = {p["event_id"] for p in published}
    await faktory.wait_hurrying(
        lambda: {r.headers["X-Switch-Event-Id"] for r in sink.requests} >= events,
        queue_name,
        LOST_RESERVATION_WAIT if faktory.real else 20,
        "every event of the group to be delivered",
    )


# -- ACK and FAIL with the next FETCH -------------------------------------------------------


async def test_deferred_commands_go_with_the_next_command(faktory: Faktory, queue_name: str):
    wid = uuid.uuid4().hex[:16]
    before = await faktory.sets()
    connection = await faktory.connect(wid)
    try:
        for i in range(2):
            await connection.push(
                {"jid": uuid.uuid4().hex, "jobtype": "t", "queue": queue_name, "args": [i]}
            )
        first = await connection.fetch([queue_name])
        assert first is not None
        acked = connection.defer("ACK", {"jid": first["jid"]})
        unknown = {"jid": uuid.uuid4().hex, "errtype": "x", "message": "no such job"}
        refused = connection.defer("FAIL", unknown)
        second = await connection.fetch([queue_name])  # ACK, FAIL and FETCH in one write
        assert acked.done() and acked.result() == "OK"
        assert refused.done() and isinstance(refused.exception(), FaktoryReplyError)
        assert "not found" in str(refused.exception())
        assert second is not None and second["jid"] != first["jid"]
        alone = connection.defer("ACK", {"jid": second["jid"]})
        assert await asyncio.wait_for(alone, 5) == "OK"  # no command came: sent on its own
        await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0})
        cut = connection.defer("ACK", {"jid": second["jid"]})
        connection.abort()
        with pytest.raises(FaktoryUnavailable, match="before Faktory answered"):
            await cut
    finally:
        await connection.close()


async def test_an_ack_cut_off_with_its_fetch_is_sent_again(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    """The ACK goes out with the consumer's next FETCH; when that connection breaks before
    Faktory's answer came, the ACK is owed and sent once Faktory is back, so the job is
    done (its reservation gone at once) and not delivered again."""
    app = await on_faktory(consumer_concurrency=1)
    queue = fallback(app)
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {"n": 0}})
    await sink.wait_for(1)
    before = await faktory.sets()
    sink.delay = 0.5
    await app.publish("t", {"body": {"n": 1}})
    await sink.wait_for(2)
    faktory.freeze()  # the delivery ends into a Faktory that does not answer
    await asyncio.sleep(1.0)
    await faktory.stop()
    await wait_until(lambda: queue.status()["unsent_acks"] == 1, 5, "the ACK to be owed")
    faktory.thaw()
    await faktory.start()
    await wait_until(lambda: queue.status()["unsent_acks"] == 0, 20, "the owed ACK sent")
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    await asyncio.sleep(0.5)
    assert [r.json() for r in sink.requests] == [{"n": 0}, {"n": 1}]
    if faktory.double is not None:  # it had applied the ACK and held back its answer
        assert faktory.double.commands["ACK"] == 3 and not faktory.double.working


# -- TLS ------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(params=["double", "real"])
async def tls_faktory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a tcp+tls Faktory whose certificate SSL_CERT_FILE (or the system) trusts."""
    if request.param == "real":
        if not REAL_URL or not REAL_URL.startswith("tcp+tls://"):
            # Faktory's open-source server speaks plain TCP: TLS needs a proxy in front.
            pytest.skip("set FAKTORY_URL=tcp+tls://… to run this against a real Faktory")
        yield REAL_URL
        return
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    double = FaktoryDouble(DOUBLE_PASSWORD, ssl_context=context)
    await double.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(cert))
        yield double.url
    await double.stop()


async def test_tls_round_trip(
    tls_faktory: str, start_switchd: StartSwitchd, queue_name: str, sink: Sink
):
    app = await start_switchd(faktory_url=tls_faktory, production_queue=queue_name)
    assert fallback(app).status()["faktory"] == "up"
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {"tls": True}})
    [request] = await sink.wait_for(1)
    assert request.json() == {"tls": True} and fallback(app).status()["pushed"] == 1


async def test_untrusted_tls_certificate_is_a_start_up_error(tmp_path: Path):
    """Double only: a real server's certificate cannot be made untrusted from here."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    double = FaktoryDouble(DOUBLE_PASSWORD, ssl_context=context)
    await double.start()
    try:
        url = double.url
        service = Switchd(
            Settings(jwt_secret=SECRET, db_name=str(tmp_path / "s.db"), faktory_url=url)
        )
        with pytest.raises(FaktoryAuthError, match="certificate"):
            await service.start()
    finally:
        await double.stop()


def test_reserve_for_outlasts_the_worst_case_delivery():
    slow = Settings(jwt_secret="x", delivery_timeout=600, quick_retries=10)
    assert reserve_for(slow) > slow.worst_case_delivery
    assert reserve_for(Settings(jwt_secret="x")) == 85  # 3 × 15 s + 2 × 5 s waits + 30 s
    assert reserve_for(Settings(jwt_secret="x", **FAST)) == 60  # Faktory's minimum
    assert reserve_for(Settings(jwt_secret="x", lease_seconds=10**6)) == 86_400
