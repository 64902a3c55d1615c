"""Endpoint isolation on Faktory: jobs set aside spend no Faktory retry, and none is lost
when switchd stops or is killed while holding them. Each test runs on the Faktory test
double and on a real Faktory: the `faktory` fixture of tests/test_faktory.py and its
[double] and [real] variants."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from switchd.queue.faktory_protocol import FETCH_BLOCK
from tests import test_faktory
from tests.conftest import Sink
from tests.test_faktory import Faktory, settle_sets, wait_until
from tests.test_isolation import (
    SET_ASIDE_ENV,
    Served,
    delivered_once_more,
    stop_with_jobs_set_aside,
)

pytestmark = pytest.mark.timeout(300)  # a real Faktory's reservations last 60 s at least

# The fixtures of tests/test_faktory.py: Faktory in its [double] and [real] variants.
faktory = test_faktory.faktory
on_faktory = test_faktory.on_faktory
queue_name = test_faktory.queue_name


def real_reservations(faktory: Faktory) -> None:
    """Let the double keep reservations as long as they ask, as Faktory does: its usual
    scaled-down reservations would expire under jobs that switchd rightly holds."""
    if faktory.double is not None:
        faktory.double.reservation_scale = 1.0


async def expire_reservations(faktory: Faktory) -> None:
    """The double's reservations expire now, as a real Faktory's do after their time:
    once the FETCHes of the killed process have run out on the server (which would take
    the jobs again for a consumer that is gone)."""
    if faktory.double is not None:
        await asyncio.sleep(FETCH_BLOCK + 0.5)
        for reservation in faktory.double.working.values():
            reservation.expires_at = 0.0


async def test_jobs_set_aside_spend_no_faktory_retry(
    on_faktory: Callable[..., Any], faktory: Faktory, queue_name: str, sink: Sink
):
    """One request at a time: the other jobs wait, held while reserved or (beyond the bound
    of 2) pushed back with `at`, and none is FAILed: each is delivered once, on its first
    try, and Faktory's Retries and Dead sets do not change."""
    real_reservations(faktory)
    app = await on_faktory(consumer_concurrency=4, endpoint_max_in_flight=1, set_aside_max=2)
    await app.add_subscriber(topic="t", target_url=sink.url())
    sink.delay = 0.2
    before = await faktory.sets()
    ids = [(await app.publish("t", {"body": {"n": n}}))[1]["event_id"] for n in range(8)]
    received = await sink.wait_for(8, timeout=60)
    await settle_sets(faktory, before, **{queue_name: 0, "Busy": 0, "Retries": 0, "Dead": 0})
    await asyncio.sleep(0.5)
    assert Counter(r.headers["X-Switch-Event-Id"] for r in received) == Counter(ids)
    assert sink.max_in_flight == 1
    if faktory.double is not None:
        assert faktory.double.commands["FAIL"] == 0 and faktory.double.failures == 0
        assert faktory.double.commands["PUSH"] > 0  # some went back to Faktory
    _, body = await app.call("GET", "/endpoints", headers=app.admin)
    assert body["set_aside"] == 0 and body["endpoints"][0]["in_flight"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_jobs_set_aside_survive_sigterm_and_kill_on_faktory(
    faktory: Faktory, queue_name: str, tmp_path: Path, sink: Sink, sig: int
):
    """SIGTERM gives the jobs set aside back to Faktory at once, spending no retry; after
    kill -9 their reservations expire and Faktory hands them out again (an expired
    reservation counts as a failure there, as for any job in flight). Nothing is lost."""
    real_reservations(faktory)
    env = {**SET_ASIDE_ENV, "FAKTORY_URL": faktory.url, "SWITCH_PRODUCTION_QUEUE": queue_name}
    before = await faktory.sets()
    ids = await stop_with_jobs_set_aside(Served(tmp_path / "s.db", **env), sink, sig)
    if sig == signal.SIGTERM:
        await settle_sets(faktory, before, **{queue_name: 6, "Busy": 0, "Retries": 0})
        connection = await faktory.connect(uuid.uuid4().hex[:16])
        try:  # a job released is as it was pushed: no failure recorded
            job = await connection.fetch([queue_name])
            assert job is not None and "failure" not in job
            await connection.push({**job, "jid": uuid.uuid4().hex})
            await connection.ack(job["jid"])
        finally:
            await connection.close()
    else:
        sizes = await faktory.sets()
        assert sizes["Busy"] - before["Busy"] == 6  # still reserved by the dead process
        await expire_reservations(faktory)
    env.pop("SWITCH_ENDPOINT_MAX_IN_FLIGHT")
    server = Served(tmp_path / "s.db", **env)
    await server.start()
    try:
        within = 20.0
        if sig == signal.SIGKILL and faktory.real:
            within += faktory.expiry_within(60) + faktory.retry_within(1)
        started = time.monotonic()
        await wait_until(lambda: len(sink.requests) >= 7, within, "every job delivered")
        waited = time.monotonic() - started
        print(f"\n{signal.Signals(sig).name}: every job delivered again within {waited:.1f} s")
        await asyncio.sleep(0.5)
        delivered_once_more(sink, ids)
    finally:
        assert await server.stop() == 0
