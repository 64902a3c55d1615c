"""Dead-letter API: listing, pagination, single and bulk replay, deletion."""

from __future__ import annotations

import asyncio

from tests.conftest import Running, Sink, StartSwitchd


async def _dead_count(app: Running, expected: int) -> None:
    for _ in range(200):
        if await app.count("dead_letters") >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"expected {expected} dead letters, have {await app.count('dead_letters')}"
    )


async def _fail_events(app: Running, topic: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        status, body = await app.publish(topic, {"body": {"i": i}, "headers": {"X-N": str(i)}})
        assert status == 202
        ids.append(body["event_id"])
    return ids


async def test_dead_letter_shows_why_and_replay_delivers_again(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.status = 404
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url("/x/:id"))
    [event_id] = await _fail_events(app, "t", 1)
    await _dead_count(app, 1)

    status, page = await app.call("GET", "/dead", headers=app.admin)
    assert status == 200 and page["next_cursor"] is None
    [record] = page["dead_letters"]
    assert record["event_id"] == event_id and record["subscriber_id"] == subscriber["id"]
    assert record["topic"] == "t" and record["attempts"] == 1 and record["last_status"] == 404
    assert "HTTP 404" in record["last_error"] and record["replayed_at"] is None
    assert record["first_attempt_at"] <= record["last_attempt_at"] <= record["dead_at"]

    status, full = await app.call("GET", f"/dead/{record['id']}", headers=app.admin)
    assert status == 200 and full["payload"] == {"body": {"i": 0}, "headers": {"X-N": "0"}}

    sink.status = 200
    status, answer = await app.call("POST", f"/dead/{record['id']}/replay", headers=app.admin)
    assert status == 202 and answer == {"replayed": 1, "event_id": event_id}
    first, second = await sink.wait_for(2)
    assert second.headers["X-Switch-Event-Id"] == event_id and second.json() == {"i": 0}
    assert second.headers["X-N"] == "0" and second.path == first.path
    _, after = await app.call("GET", f"/dead/{record['id']}", headers=app.admin)
    assert after["replayed_at"] is not None


async def test_pagination_and_filters(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    sink.status = 400
    a = await app.add_subscriber(topic="a", target_url=sink.url("/a"))
    await app.add_subscriber(topic="b", target_url=sink.url("/b"))
    await _fail_events(app, "a", 5)
    await _fail_events(app, "b", 2)
    await _dead_count(app, 7)

    seen, cursor = [], None
    while True:
        query = "/dead?topic=a&limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await app.call("GET", query, headers=app.admin)
        assert status == 200 and len(page["dead_letters"]) <= 2
        seen.extend(page["dead_letters"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and {r["topic"] for r in seen} == {"a"}
    assert [r["id"] for r in seen] == sorted((r["id"] for r in seen), reverse=True)
    _, by_subscriber = await app.call("GET", f"/dead?subscriber_id={a['id']}", headers=app.admin)
    assert len(by_subscriber["dead_letters"]) == 5
    status, bad = await app.call("GET", "/dead?limit=many", headers=app.admin)
    assert status == 400 and bad["error"]["code"] == "invalid_request"


async def test_bulk_replay_by_topic_and_delete(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    sink.status = 400
    await app.add_subscriber(topic="a", target_url=sink.url("/a"))
    await app.add_subscriber(topic="b", target_url=sink.url("/b"))
    await _fail_events(app, "a", 3)
    await _fail_events(app, "b", 1)
    await _dead_count(app, 4)
    sink.status = 200

    status, answer = await app.call("POST", "/dead/replay", json={"topic": "a"}, headers=app.admin)
    assert status == 202 and answer == {"replayed": 3}
    await sink.wait_for(7)
    await asyncio.sleep(0.2)
    assert [r.path for r in sink.requests[4:]] == ["/a"] * 3
    # already replayed: a second bulk replay does nothing
    _, again = await app.call("POST", "/dead/replay", json={"topic": "a"}, headers=app.admin)
    assert again == {"replayed": 0}

    status, bad = await app.call("POST", "/dead/replay", json={}, headers=app.admin)
    assert status == 400 and bad["error"]["code"] == "invalid_request"
    _, page = await app.call("GET", "/dead?topic=b", headers=app.admin)
    dead_id = page["dead_letters"][0]["id"]
    assert (await app.call("DELETE", f"/dead/{dead_id}", headers=app.admin))[0] == 204
    assert (await app.call("DELETE", f"/dead/{dead_id}", headers=app.admin))[0] == 404
    assert await app.count("dead_letters") == 3


async def test_replay_refused_when_subscriber_is_gone(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    sink.status = 400
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    await _fail_events(app, "t", 1)
    await _dead_count(app, 1)
    await app.call("DELETE", f"/subscribers/{subscriber['id']}", headers=app.admin)
    _, page = await app.call("GET", "/dead", headers=app.admin)
    dead_id = page["dead_letters"][0]["id"]
    status, answer = await app.call("POST", f"/dead/{dead_id}/replay", headers=app.admin)
    assert status == 409 and answer["error"]["code"] == "replay_refused"
    assert await app.count("jobs") == 0
    for path in ("/dead/999/replay", "/dead/abc/replay"):
        status, answer = await app.call("POST", path, headers=app.admin)
        assert status == 404 and answer["error"]["code"] == "not_found"
    status, _ = await app.call("GET", "/dead", headers=app.publisher)
    assert status == 403
