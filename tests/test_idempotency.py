"""Idempotent publish: same author and key → the first response, nothing new enqueued."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from switchd import event_log
from switchd.auth import mint
from tests.conftest import SECRET, Running, Sink, StartSwitchd
from tests.faktory_double import FaktoryDouble
from tests.test_crash_durability import (
    PATHS,
    LoggedServer,
    add_subscribers,
    delivered,
    publish_all,
    wait_for_empty_queue,
    wait_until_covered,
)

QUEUE = "switchd-idempotency"
QUIET = {"consumer_concurrency": 0}  # accept and enqueue only


async def _publish(app, key: str, body: dict, author: str = "svc"):
    headers = {"Authorization": "Bearer " + mint(SECRET, author), "Idempotency-Key": key}
    async with app.client.post(
        app.url + "/publish", json={"topic": "t", "payload": body}, headers=headers
    ) as response:
        return response.status, await response.json(), response.headers.get("Idempotent-Replayed")


async def test_concurrent_identical_requests_make_one_event(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url("/a"))
    await app.add_subscriber(topic="t", target_url=sink.url("/b"))
    results = await asyncio.gather(*(_publish(app, "k-1", {"body": {"n": 1}}) for _ in range(20)))
    assert {status for status, _, _ in results} == {202}
    assert len({body["event_id"] for _, body, _ in results}) == 1
    assert sum(replayed == "true" for _, _, replayed in results) == 19
    await sink.wait_for(2)
    await asyncio.sleep(0.3)
    assert sorted(r.path for r in sink.requests) == ["/a", "/b"]
    assert await app.count("events") == 1


async def test_later_repeat_returns_first_response(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    first = await _publish(app, "k", {"body": {"n": 1}})
    again = await _publish(app, "k", {"body": {"n": 1}})
    assert first[0] == again[0] == 202 and first[1] == again[1]
    assert first[2] is None and again[2] == "true"
    assert await app.count("jobs") == 1
    other_author = await _publish(app, "k", {"body": {"n": 1}}, author="other")
    assert other_author[1]["event_id"] != first[1]["event_id"] and other_author[2] is None
    reused = await _publish(app, "k", {"body": {"n": 2}})
    assert reused[0] == 422 and reused[1]["error"]["code"] == "idempotency_key_reused"
    bad = await _publish(app, "", {"body": {}})
    assert bad[0] == 400 and bad[1]["error"]["code"] == "invalid_idempotency_key"
    assert await app.count("jobs") == 2


async def test_expired_keys_are_purged_and_reusable(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    first = await _publish(app, "old", {"body": {}})
    day_ago = time.time() - 86401
    await app.service.db.write([("UPDATE idempotency_keys SET created_at = ?", (day_ago,))])
    assert await app.service.idempotency.purge() == 1
    again = await _publish(app, "old", {"body": {}})
    assert again[2] is None and again[1]["event_id"] != first[1]["event_id"]


async def test_publish_helper_sends_the_headers_it_is_given(
    start_switchd: StartSwitchd, sink: Sink
):
    """`Running.publish` forwards its keyword arguments (headers merged with the token)."""
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    key = {"Idempotency-Key": "helper"}
    first = await app.publish("t", {"body": {}}, headers=key)
    again = await app.publish("t", {"body": {}}, headers=key)
    assert first[0] == again[0] == 202 and first[1] == again[1]
    assert await app.count("jobs") == 1
    anonymous = await app.publish("t", {"body": {}}, headers={"Authorization": "Bearer x"})
    assert anonymous[0] == 401


# --- a storage fault on the commit: nothing stored, the retry succeeds once ------------------

# Each fault makes the transaction holding the publish fail: at its COMMIT (a deferred
# foreign key that a trigger on the key row violates), or at the key's or a job's row.
FAULTS = {
    "at-commit": [
        "CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE fault_child (parent INTEGER REFERENCES fault_parent(id) "
        "DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER fault AFTER INSERT ON idempotency_keys BEGIN "
        "INSERT INTO fault_child VALUES (1); END",
    ],
    "on-key-row": [
        "CREATE TRIGGER fault BEFORE INSERT ON idempotency_keys BEGIN "
        "SELECT RAISE(ABORT, 'injected storage fault'); END"
    ],
    "on-job-row": [
        "CREATE TRIGGER fault BEFORE INSERT ON jobs BEGIN "
        "SELECT RAISE(ABORT, 'injected storage fault'); END"
    ],
}


@contextlib.asynccontextmanager
async def storage_fault(app: Running, name: str) -> AsyncIterator[None]:
    """Make the writer's transactions fail as FAULTS[name] says, until the block ends."""
    writer = app.service.db._writer
    assert writer is not None
    await writer.execute("PRAGMA foreign_keys = ON")  # enforces the deferred key at COMMIT
    for sql in FAULTS[name]:
        await writer.execute(sql)
    try:
        yield
    finally:
        await writer.execute("DROP TRIGGER fault")
        await writer.execute("PRAGMA foreign_keys = OFF")


async def assert_nothing_stored(app: Running) -> None:
    for _ in range(2):  # now, and after the delivery log's flush interval
        for table in ("jobs", "events", "idempotency_keys"):
            assert await app.count(table) == 0, table
        await asyncio.sleep(event_log.FLUSH_SECONDS * 1.5)


async def assert_delivered_once(sink: Sink, event_id: str) -> None:
    await sink.wait_for(1)
    await asyncio.sleep(0.3)
    assert [r.headers["X-Switch-Event-Id"] for r in sink.requests] == [event_id]


async def retry_succeeds_once(app: Running, payload: dict, topic: str = "t") -> str:
    """Publish with key "k" twice: the first stores the event, the second replays it."""
    status, first = await app.publish(topic, payload, headers={"Idempotency-Key": "k"})
    assert status == 202, first
    status, again = await app.publish(topic, payload, headers={"Idempotency-Key": "k"})
    assert (status, again) == (202, first)
    assert await app.count("idempotency_keys") == 1
    return first["event_id"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_storage_fault_on_the_commit_stores_nothing_then_the_retry_succeeds_once(
    fault: str, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url())
    payload = {"body": {"n": 1}}
    async with storage_fault(app, fault):
        status, body = await app.publish("t", payload, headers={"Idempotency-Key": "k"})
        assert (status, body["error"]["code"]) == (503, "queue_unavailable")
        await assert_nothing_stored(app)
    event_id = await retry_succeeds_once(app, payload)
    await assert_delivered_once(sink, event_id)


@pytest.mark.parametrize("fault", ["at-commit", "on-key-row"])
async def test_unmatched_event_key_is_committed_with_its_log_row(
    fault: str, start_switchd: StartSwitchd
):
    """No subscriber, no job: the key and the event's delivery-log row share a commit."""
    app = await start_switchd()
    async with storage_fault(app, fault):
        status, _ = await app.publish("nobody", {}, headers={"Idempotency-Key": "k"})
        assert status == 503
        await assert_nothing_stored(app)
    event_id = await retry_succeeds_once(app, {}, topic="nobody")
    row = await app.service.db.fetchone("SELECT id, matched FROM events")  # at once: no flush
    assert row is not None and (row["id"], row["matched"]) == (event_id, "[]")


# --- under Faktory ---------------------------------------------------------------------------


@pytest.fixture
async def double() -> AsyncIterator[FaktoryDouble]:
    """The Faktory-protocol test double (NOT Faktory: see tests/faktory_double.py)."""
    server = FaktoryDouble()
    await server.start()
    yield server
    await server.stop()


def queued(double: FaktoryDouble) -> list[dict]:
    return list(double.queues[QUEUE])


async def key_state(app: Running) -> str:
    row = await app.service.db.fetchone("SELECT state FROM idempotency_keys")
    assert row is not None
    return row["state"]


async def test_faktory_jobs_keep_the_seed_layout_and_the_key_ends_done(
    double: FaktoryDouble, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(faktory_url=double.url, production_queue=QUEUE, **QUIET)
    await app.add_subscriber(topic="t", target_url=sink.url(), filter_expression="True")
    published = {"http_method": "post", "body": {"x": {"y": 1}}}
    status, body = await app.publish("t", published, headers={"Idempotency-Key": "k"})
    assert status == 202
    [job] = queued(double)
    assert job["args"] == [sink.url(), "True", base64.b64encode(orjson.dumps(published)).decode()]
    assert job["custom"]["event_id"] == body["event_id"]
    assert await key_state(app) == "done"
    again = await app.publish("t", published, headers={"Idempotency-Key": "k"})
    assert again == (202, body) and len(queued(double)) == 1


async def test_faktory_key_that_cannot_be_stored_pushes_nothing(
    double: FaktoryDouble, start_switchd: StartSwitchd, sink: Sink
):
    """The pending row is committed before the push: if it cannot be, nothing is pushed."""
    app = await start_switchd(faktory_url=double.url, production_queue=QUEUE)
    await app.add_subscriber(topic="t", target_url=sink.url())
    async with storage_fault(app, "on-key-row"):
        status, _ = await app.publish("t", {"body": {}}, headers={"Idempotency-Key": "k"})
        assert status == 503
        await assert_nothing_stored(app)
        assert double.commands["PUSHB"] == 0 and queued(double) == []
    event_id = await retry_succeeds_once(app, {"body": {}})
    await assert_delivered_once(sink, event_id)


@pytest.mark.parametrize("fault", ["at-commit", "on-job-row"])
async def test_local_fallback_while_faktory_is_down_is_atomic(
    fault: str, double: FaktoryDouble, start_switchd: StartSwitchd, sink: Sink
):
    """With Faktory down the jobs go to the local queue, with the key in their commit."""
    app = await start_switchd(faktory_url=double.url, production_queue=QUEUE)
    await app.add_subscriber(topic="t", target_url=sink.url())
    await double.stop()
    status, spilled = await app.publish("t", {"body": {"n": 0}})  # finds Faktory down
    assert status == 202 and app.service.queue_status()["faktory"] == "down"
    await assert_delivered_once(sink, spilled["event_id"])
    sink.requests.clear()
    async with storage_fault(app, fault):
        status, _ = await app.publish("t", {"body": {}}, headers={"Idempotency-Key": "k"})
        assert status == 503
        assert await app.count("idempotency_keys") == 0 and await app.count("jobs") == 0
    event_id = await retry_succeeds_once(app, {"body": {}})
    await assert_delivered_once(sink, event_id)


# --- `switchd serve` killed (kill -9) at the worst moment --------------------------------------

# Runs `switchd serve` with one method of switchd wrapped so that the process stops dead,
# before or after the original runs, until the test kills it. Test-only: switchd itself
# has no such hook; this script patches it from outside, in the child process.
HANG_AT = r"""
import asyncio, importlib, sys

target, when = sys.argv[1], sys.argv[2]
module, _, qualified = target.partition(":")
owner_name, _, method = qualified.partition(".")
owner = getattr(importlib.import_module(module), owner_name)
original = getattr(owner, method)


async def hang():
    print("HANGING AT " + target, file=sys.stderr, flush=True)
    await asyncio.Event().wait()  # until the test kills this process


async def hanging(*args, **kwargs):
    if when == "before":
        await hang()
    result = await original(*args, **kwargs)
    if when == "after":
        await hang()
    return result


setattr(owner, method, hanging)
from switchd.cli import main

main(["serve"])
"""
KILL_ENV = {"SWITCH_CONSUMER_CONCURRENCY_LEVEL": "0"}  # nothing is delivered before the kill


class HangingServer(LoggedServer):
    """`switchd serve` that hangs at `target` ("module:Class.method"), `when` before or
    after the method ran; `hung()` waits for that moment."""

    def __init__(self, db: Path, target: str, when: str, **env: str) -> None:
        super().__init__(db, **env)
        self.arguments = ("-c", HANG_AT, target, when)

    async def hung(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while b"HANGING AT" not in self.log:
            assert time.monotonic() < deadline, f"never hung:\n{self.tail()}"
            await asyncio.sleep(0.02)


async def publish_keyed(url: str, payload: dict) -> tuple[int, dict, str | None]:
    headers = {"Authorization": "Bearer " + mint(SECRET, "svc"), "Idempotency-Key": "k"}
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            url + "/publish", json={"topic": "t", "payload": payload}, headers=headers
        ) as r,
    ):
        return r.status, await r.json(), r.headers.get("Idempotent-Replayed")


async def kill_while_publishing(server: HangingServer, payload: dict) -> None:
    """Publish with key "k", kill -9 the server once it hangs; the publisher gets no answer."""
    publishing = asyncio.create_task(publish_keyed(server.url, payload))
    await server.hung()
    assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises(aiohttp.ClientError):
        await publishing


def stored(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def restart_and_retry(db: Path, payload: dict, **env: str) -> tuple[LoggedServer, dict]:
    server = LoggedServer(db, **env)
    await server.start()
    status, body, replayed = await publish_keyed(server.url, payload)
    assert (status, replayed) == (202, "true"), body
    return server, body


async def test_killed_after_the_commit_the_retry_gets_the_first_event_once(
    tmp_path: Path, sink: Sink
):
    """The worst moment on the embedded queue: the jobs and the key are committed, the
    publisher has no answer yet. Its retry gets the first event id; one delivery."""
    db = tmp_path / "switch.db"
    server = HangingServer(db, "switchd.queue.local:LocalQueue.enqueue", "after", **KILL_ENV)
    await server.start()
    status, _ = await server.call(
        "POST", "/subscribers", {"topic": "t", "target_url": sink.url()}, admin=True
    )
    assert status == 201
    await kill_while_publishing(server, {"body": {"n": 1}})
    [(first_id,)] = stored(db, "SELECT id FROM events")
    assert stored(db, "SELECT state FROM idempotency_keys") == [("done",)]

    server, body = await restart_and_retry(db, {"body": {"n": 1}})
    try:
        assert body["event_id"] == first_id
        await assert_delivered_once(sink, first_id)
        assert stored(db, "SELECT COUNT(*) FROM events") == [(1,)]
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("when", "deliveries"),
    [
        ("before", 1),  # the key is pending, nothing reached Faktory: pushed once, on retry
        ("after", 2),  # Faktory has the jobs, the key is still pending: pushed again
    ],
)
async def test_faktory_killed_around_the_push_the_retry_gets_the_first_event_id(
    when: str, deliveries: int, tmp_path: Path, double: FaktoryDouble, sink: Sink
):
    """Under Faktory the key is pending from before the push until after it. A retry
    after a kill in that window gets the first event id and pushes its jobs again: the
    README's guarantee, at least once and never a second event id."""
    db = tmp_path / "switch.db"
    env = {"FAKTORY_URL": double.url, "SWITCH_PRODUCTION_QUEUE": QUEUE}
    target = "switchd.queue.faktory:FaktoryQueue._push_group"
    server = HangingServer(db, target, when, **env, **KILL_ENV)
    await server.start()
    status, _ = await server.call(
        "POST", "/subscribers", {"topic": "t", "target_url": sink.url()}, admin=True
    )
    assert status == 201
    await kill_while_publishing(server, {"body": {"n": 1}})
    [(state, response)] = stored(db, "SELECT state, response FROM idempotency_keys")
    first_id = orjson.loads(response)["event_id"]
    assert state == "pending" and len(queued(double)) == deliveries - 1

    server, body = await restart_and_retry(db, {"body": {"n": 1}}, **env)
    try:
        assert body["event_id"] == first_id
        await sink.wait_for(deliveries)
        await asyncio.sleep(0.5)
        assert [r.headers["X-Switch-Event-Id"] for r in sink.requests] == [first_id] * deliveries
        assert len({r.headers["webhook-id"] for r in sink.requests}) == 1  # receivers dedupe
        assert stored(db, "SELECT state FROM idempotency_keys") == [("done",)]
    finally:
        await server.stop()


# The reproduction: rounds of keyed publishes under load, `switchd serve` killed
# partway through each round, restarted on the same database, every key published again.
ROUNDS = 4
KEYS_PER_ROUND = 300
KILL_AFTER = 100  # accepted publishes before the kill (more are in flight)


async def test_keys_hold_through_kills_under_load(tmp_path: Path, sink: Sink):
    db = tmp_path / "switch.db"
    first: dict[int, str] = {}  # key number → event id of its first 202
    stored_unanswered = 0  # keys stored by a killed server without the publisher knowing
    for number in range(ROUNDS):
        keys = range(number * KEYS_PER_ROUND, (number + 1) * KEYS_PER_ROUND)
        killed = LoggedServer(db, **KILL_ENV)
        await killed.start()
        if number == 0:
            await add_subscribers(killed, sink)
        kill = functools.partial(kill_after, killed, KILL_AFTER)
        before = await publish_all(killed.url, keys, on_accepted=kill, keyed=True)
        await killed.stop(signal.SIGKILL)
        again = LoggedServer(db, **KILL_ENV)
        await again.start()
        after = await publish_all(again.url, keys, keyed=True)
        assert await again.stop() == 0
        assert sorted(after.accepted) == list(keys), after.failures
        for key, event_id in before.accepted.items():
            assert after.accepted[key] == event_id and key in after.replayed
        stored_unanswered += len(after.replayed - before.accepted.keys())
        first.update(after.accepted)

    final = LoggedServer(db)  # with consumers: now every event is delivered
    await final.start()
    try:
        expected = {(event_id, path) for event_id in first.values() for path in PATHS}
        await wait_until_covered(sink, expected, timeout=60)
        assert await wait_for_empty_queue(db) == 0
    finally:
        await final.stop()
    counts = delivered(sink)
    print(
        f"[kills] {len(first)} keys, {len(set(first.values()))} event ids, "
        f"{stored_unanswered} stored by a killed server before it answered, "
        f"{len(sink.requests)} deliveries"
    )
    assert len(set(first.values())) == len(first) == ROUNDS * KEYS_PER_ROUND
    assert stored(db, "SELECT COUNT(*) FROM events") == [(len(first),)]
    assert set(counts) == expected and set(counts.values()) == {1}  # each exactly once


def kill_after(server: LoggedServer, quota: int, accepted: int) -> None:
    if accepted == quota:
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
