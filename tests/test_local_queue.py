"""The embedded queue's batched SQL: leases read jobs and payloads as one JSON row, and
group commits write and delete many rows per statement. Same results as row by row."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from switchd.models import Outcome
from switchd.queue.local import LocalQueue
from tests.conftest import Sink, StartSwitchd

PAYLOAD = {
    "body": {
        "n": 2**62,
        "f": 1.5e300,
        "small": 0.1,
        "s": 'é \u2028 "q" \\ \x01',
        "x": [None, True],
    },
    "headers": {"X-A": "1"},
    "extra": {},
}


async def test_leased_jobs_carry_their_events_payloads_unchanged(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    subscribers = [
        await app.add_subscriber(topic="t", target_url=sink.url(f"/{i}")) for i in range(3)
    ]
    published = [await app.service.publish("t", "svc", {**PAYLOAD, "i": i}) for i in range(4)]
    jobs = await app.service.local_queue.lease(100, 30)
    assert len(jobs) == 12
    by_event = {p["event_id"]: i for i, p in enumerate(published)}
    for job in jobs:
        assert job.payload == {**PAYLOAD, "i": by_event[job.event_id]}
        assert job.topic == "t" and job.author == "svc" and job.extra["lease"] == 1
    assert {(j.event_id, j.subscriber_id) for j in jobs} == {
        (p["event_id"], s["id"]) for p in published for s in subscribers
    }
    # Leased jobs are not due again until their lease runs out.
    assert await app.service.local_queue.lease(100, 30) == []


async def test_one_group_commit_acks_only_jobs_whose_lease_is_current(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    queue = app.service.local_queue
    for i in range(10):
        await app.service.publish("t", "svc", {"body": {"i": i}})
    first = await queue.lease(100, -1)  # leased, but due again at once (as if expired)
    again = await queue.lease(4, 30)  # four of them leased anew: the first lease is stale
    assert len(first) == 10 and {j.extra["lease"] for j in again} == {2}
    delivered = Outcome("delivered", status=200, finished_at=time.time())
    await asyncio.gather(*(queue.settle(job, delivered) for job in first))  # one group
    left = await app.service.db.fetchall("SELECT id, lease FROM jobs ORDER BY id")
    assert {(str(r[0]), r[1]) for r in left} == {(j.id, 2) for j in again}


async def test_a_lease_shares_the_group_commit_that_stores_the_jobs_it_takes(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    db, queue = app.service.db, app.service.local_queue
    commits = db.commits
    published, leased = await asyncio.gather(
        app.service.publish("t", "svc", {"body": {"n": 1}}), queue.lease(10, 30)
    )
    assert db.commits - commits == 1  # the publish's inserts, then the lease, one COMMIT
    assert [(job.event_id, job.payload) for job in leased] == [
        (published["event_id"], {"body": {"n": 1}})
    ]


async def test_a_failed_group_commit_fails_its_lease_too(start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    bad = ("INSERT INTO no_such_table VALUES (?)", (1,))
    results = await asyncio.gather(
        app.service.db.write([bad], durable=False),
        app.service.local_queue.lease(10, 30),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    assert await app.service.local_queue.lease(10, 30) == []  # the next commit works


def lease_limits(queue: LocalQueue, monkeypatch) -> list[int]:
    """The `limit` of each lease the queue runs from now on."""
    limits: list[int] = []
    lease = queue.lease

    async def counted(limit: int, seconds: float):
        limits.append(limit)
        return await lease(limit, seconds)

    monkeypatch.setattr(queue, "lease", counted)
    return limits


async def test_waiting_consumers_each_get_a_job_of_one_lease(
    start_switchd: StartSwitchd, sink: Sink, monkeypatch
):
    app = await start_switchd(consumer_concurrency=0)
    for i in range(8):
        await app.add_subscriber(topic="t", target_url=sink.url(f"/{i}"))
    queue = app.service.local_queue
    limits = lease_limits(queue, monkeypatch)
    waiting = [asyncio.create_task(queue.next()) for _ in range(8)]
    await asyncio.sleep(0.05)  # all eight wait on an empty queue
    await app.service.publish("t", "svc", {"body": {}})  # eight jobs in one commit
    jobs = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert len({job.id for job in jobs}) == 8
    assert limits == [8, 8]  # the empty lease, then one for all eight


async def test_the_next_lease_starts_before_the_consumers_served_run(
    start_switchd: StartSwitchd, sink: Sink, monkeypatch
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    queue = app.service.local_queue
    for i in range(3):
        await app.service.publish("t", "svc", {"body": {"i": i}})
    steps: list[str] = []
    consumers: list[asyncio.Task] = []
    lease = queue.lease

    async def consume(name: str) -> None:
        await queue.next()
        steps.append(name)

    async def recorded(limit: int, seconds: float):
        steps.append(f"lease {limit}")
        if len(consumers) == 1:  # two more consumers wait while the first lease is under way
            consumers.extend(asyncio.create_task(consume(n)) for n in "bc")
        return await lease(limit, seconds)

    monkeypatch.setattr(queue, "lease", recorded)
    consumers.append(asyncio.create_task(consume("a")))
    await asyncio.wait_for(consumers[0], 5)
    await asyncio.wait_for(asyncio.gather(*consumers[1:]), 5)
    # The first lease fills its one request; the next is under way before its consumer runs.
    assert steps[:3] == ["lease 1", "lease 2", "a"]
    assert sorted(steps[3:]) == ["b", "c"]


async def test_a_lease_that_finds_fewer_due_jobs_than_wanted_is_not_repeated_at_once(
    start_switchd: StartSwitchd, sink: Sink, monkeypatch
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    queue = app.service.local_queue
    limits = lease_limits(queue, monkeypatch)
    waiting = [asyncio.create_task(queue.next()) for _ in range(3)]
    await asyncio.sleep(0.05)  # all three wait on an empty queue
    await app.service.publish("t", "svc", {"body": {}})
    await asyncio.wait_for(asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED), 5)
    await asyncio.sleep(0.1)
    assert limits == [3, 3]  # the empty lease, then the one that found the job: no more
    await app.service.publish("t", "svc", {"body": {}})  # a stored job wakes the leasing
    for _ in range(500):
        if sum(task.done() for task in waiting) == 2:
            break
        await asyncio.sleep(0.01)
    assert sum(task.done() for task in waiting) == 2 and limits == [3, 3, 2]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_job_handed_to_a_consumer_as_it_is_cancelled_is_released(
    start_switchd: StartSwitchd, sink: Sink, monkeypatch
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    queue = app.service.local_queue
    published = await app.service.publish("t", "svc", {"body": {}})
    lease = queue.lease
    consumer: asyncio.Task = asyncio.create_task(queue.next())

    async def cancelling(limit: int, seconds: float):
        jobs = await lease(limit, seconds)
        asyncio.get_running_loop().call_soon(consumer.cancel)  # before it can resume
        return jobs

    monkeypatch.setattr(queue, "lease", cancelling)
    await asyncio.gather(consumer, return_exceptions=True)
    assert consumer.cancelled()
    await queue.release([])
    monkeypatch.undo()
    assert [job.event_id for job in await queue.lease(10, 30)] == [published["event_id"]]


async def test_waiting_consumers_get_the_error_when_the_store_fails_while_idle(
    start_switchd: StartSwitchd, monkeypatch
):
    app = await start_switchd(consumer_concurrency=0)
    queue = app.service.local_queue

    async def store_down() -> float:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(queue, "_seconds_until_due", store_down)
    waiting = [asyncio.create_task(queue.next()) for _ in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results


async def test_jobs_leased_ahead_wait_for_the_next_free_consumer(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    db, queue = app.service.db, app.service.local_queue
    queue.prefetch = 3
    for i in range(10):
        await app.service.publish("t", "svc", {"body": {"i": i}})
    first = await queue.next()
    leased = "SELECT COUNT(*) FROM jobs WHERE lease > 0"
    for _ in range(500):  # the lease ahead lands in the background
        if (await db.fetchone(leased))[0] == 4:
            break
        await asyncio.sleep(0.01)
    commits = db.commits
    ahead = [await queue.next() for _ in range(3)]  # each without waiting for a commit
    assert db.commits == commits
    assert len({job.id for job in [first, *ahead]}) == 4
    assert {job.extra["lease"] for job in ahead} == {1}
    # At shutdown the jobs still leased ahead are due again at once, with those given back.
    await queue.release([first, *ahead])
    assert len(await queue.lease(100, 30)) == 10


async def test_a_job_leased_ahead_too_long_ago_is_leased_anew_before_it_runs(
    start_switchd: StartSwitchd, sink: Sink
):
    # A lease of 1.2 s leaves 0.2 s to start a delivery that may take 1 s.
    app = await start_switchd(
        consumer_concurrency=0, delivery_timeout=1.0, quick_retries=0, lease_seconds=1.2
    )
    await app.add_subscriber(topic="t", target_url=sink.url())
    queue = app.service.local_queue
    queue.prefetch = 1
    for i in range(2):
        await app.service.publish("t", "svc", {"body": {"i": i}})
    first = await queue.next()  # and the other job is leased ahead
    await asyncio.sleep(0.5)
    second = await queue.next()
    assert second.id != first.id
    assert second.extra["lease"] == 2  # not handed out under the lease that ends too soon
