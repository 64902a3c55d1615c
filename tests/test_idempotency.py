"""Idempotent publish: same author and key → the first response, nothing new enqueued."""

from __future__ import annotations

import asyncio
import time

from switchd.auth import mint
from tests.conftest import SECRET, Sink, StartSwitchd


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
