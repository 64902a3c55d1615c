"""The delivery log API: events and attempts as recorded, stats, retention, test deliveries.

Real sinks on 127.0.0.1 answer as scripted; the tests check what they received against
what `GET /events`, `GET /events/{id}` and `GET /subscribers/{id}/stats` say.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from standardwebhooks import Webhook

from switchd import event_log
from switchd.auth import mint
from switchd.config import Settings
from switchd.db import Database
from switchd.event_log import EventLog
from switchd.metrics import Metrics
from switchd.models import Event
from switchd.service import Switchd
from tests.conftest import SECRET, Running, Sink, StartSwitchd, serve_sink
from tests.faktory_double import FaktoryDouble

T = TypeVar("T")
DAY = 86400.0


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout=5.0) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def event_where(app: Running, event_id: str, condition: Callable[[Any], bool]) -> Any:
    """`GET /events/{id}` once `condition` holds for it."""

    async def check() -> Any:
        status, body = await app.call("GET", f"/events/{event_id}", headers=app.admin)
        return body if status == 200 and condition(body) else None

    return await eventually(check, f"event {event_id}")


def states(event: Any) -> dict[str, str]:
    return {s["subscriber_id"]: s["state"] for s in event["subscribers"]}


async def listing(app: Running, query: str) -> list[Any]:
    status, page = await app.call("GET", f"/events?{query}", headers=app.admin)
    assert status == 200, page
    return page["events"]


async def publish_as(app: Running, author: str, topic: str, payload: dict[str, Any]) -> str:
    headers = {"Authorization": "Bearer " + mint(SECRET, author)}
    body = {"topic": topic, "payload": payload}
    status, answer = await app.call("POST", "/publish", json=body, headers=headers)
    assert status == 202, answer
    return answer["event_id"]


@pytest.fixture
async def other_sink() -> AsyncIterator[Sink]:
    recorder, runner = await serve_sink()
    yield recorder
    await runner.cleanup()


# --- listing ---------------------------------------------------------------------------


async def test_events_listing_filters_and_cursor_pagination(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    await app.add_subscriber(topic="a", target_url=sink.url("/a"))
    svc = [await publish_as(app, "svc", "a", {"body": {"i": i}}) for i in range(5)]
    billing = [await publish_as(app, "billing", "a", {"body": {"i": i}}) for i in range(2)]
    nobody = [await publish_as(app, "svc", "nobody", {"body": {}}) for _ in range(2)]
    await sink.wait_for(7)

    async def all_delivered() -> bool:
        return len(await listing(app, "status=delivered")) == 7

    await eventually(all_delivered, "7 delivered events")
    seen, cursor, pages = [], None, 0
    while True:
        page_query = "topic=a&limit=3" + (f"&cursor={cursor}" if cursor else "")
        status, page = await app.call("GET", f"/events?{page_query}", headers=app.admin)
        assert status == 200 and len(page["events"]) <= 3
        seen.extend(page["events"])
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and [e["id"] for e in seen] == (svc + billing)[::-1]  # newest first
    first = seen[-1]
    assert first["topic"] == "a" and first["author"] == "svc" and first["status"] == "delivered"
    assert first["payload_size"] == len(b'{"body":{"i":0}}') and first["test"] is False
    assert len(first["matched"]) == 1

    assert [e["id"] for e in await listing(app, "author=billing")] == billing[::-1]
    unmatched = await listing(app, "status=unmatched")
    assert [e["id"] for e in unmatched] == nobody[::-1]
    assert all(e["matched"] == [] and e["topic"] == "nobody" for e in unmatched)
    assert await listing(app, "status=pending") == []
    assert await listing(app, "status=dead") == [] and await listing(app, "status=failed") == []
    middle = seen[3]["received_at"]
    since = await listing(app, f"topic=a&since={middle!r}")
    until = await listing(app, f"topic=a&until={middle!r}")
    assert [e["id"] for e in since + until] == [e["id"] for e in seen]
    assert since[-1]["received_at"] == middle


@pytest.mark.parametrize(
    "query", ["status=lost", "since=yesterday", "until=1e", "limit=-1", "cursor=x"]
)
async def test_events_listing_refuses_bad_parameters(start_switchd: StartSwitchd, query: str):
    app = await start_switchd(consumer_concurrency=0)
    status, body = await app.call("GET", f"/events?{query}", headers=app.admin)
    assert status == 400 and body["error"]["code"] == "invalid_request", body


async def test_log_endpoints_are_admin_only_and_404_for_unknown_ids(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    for method, path in [
        ("GET", "/events"),
        ("GET", "/events/x"),
        ("GET", f"/subscribers/{subscriber['id']}/stats"),
        ("POST", f"/subscribers/{subscriber['id']}/test"),
    ]:
        assert (await app.call(method, path))[0] == 401
        assert (await app.call(method, path, headers=app.publisher))[0] == 403
    for method, path in [
        ("GET", f"/events/{uuid.uuid4()}"),
        ("GET", "/subscribers/nope/stats"),
        ("POST", "/subscribers/nope/test"),
    ]:
        status, body = await app.call(method, path, headers=app.admin)
        assert status == 404 and body["error"]["code"] == "not_found", (path, body)


# --- one event's fate ------------------------------------------------------------------


async def test_event_attempts_across_a_retry_and_a_dead_letter(
    start_switchd: StartSwitchd, sink: Sink, other_sink: Sink
):
    app = await start_switchd(retry_schedule=(1.5,))
    sink.script.extend([503, 503, 503])  # the first try and two quick retries, then 200
    other_sink.status = 400
    ok = await app.add_subscriber(topic="t", target_url=sink.url("/ok"))
    bad = await app.add_subscriber(topic="t", target_url=other_sink.url("/bad"))
    _, published = await app.publish("t", {"body": {"n": 1}})
    event_id = published["event_id"]

    waiting = await event_where(app, event_id, lambda e: states(e)[ok["id"]] == "failed")
    [retrying] = [s for s in waiting["subscribers"] if s["subscriber_id"] == ok["id"]]
    assert [a["status"] for a in retrying["attempts"]] == [503, 503, 503]
    assert retrying["next_retry_at"] == retrying["attempts"][-1]["next_retry_at"]
    assert retrying["next_retry_at"] > time.time() - 0.5 and len(sink.requests) == 3

    event = await event_where(app, event_id, lambda e: states(e)[ok["id"]] == "delivered")
    assert event["status"] == "dead" and event["matched"] == published["subscribers"]
    assert [r.headers["X-Switch-Event-Id"] for r in await sink.wait_for(4)] == [event_id] * 4
    by_id = {s["subscriber_id"]: s for s in event["subscribers"]}
    delivered = by_id[ok["id"]]
    assert delivered["state"] == "delivered" and delivered["dead_letter_id"] is None
    attempts = delivered["attempts"]
    assert [(a["attempt"], a["status"], a["outcome"]) for a in attempts] == [
        (1, 503, "transient"),
        (2, 503, "transient"),
        (3, 503, "transient"),
        (4, 200, "delivered"),
    ]
    assert [a["next_retry_at"] is not None for a in attempts] == [False, False, True, False]
    assert attempts[3]["at"] >= attempts[2]["next_retry_at"] >= attempts[2]["at"] + 1.2
    assert attempts[0]["error"] == "HTTP 503: status 503" and attempts[3]["error"] is None
    assert all(a["duration_ms"] >= 0 for a in attempts)

    _, dead = await app.call("GET", "/dead", headers=app.admin)
    [letter] = dead["dead_letters"]
    failed = by_id[bad["id"]]
    assert failed["state"] == "dead" and failed["dead_letter_id"] == letter["id"]
    assert [(a["attempt"], a["status"], a["outcome"], a["error"]) for a in failed["attempts"]] == [
        (1, 400, "permanent", "HTTP 400: status 400")
    ]
    assert len(other_sink.requests) == 1
    assert [e["id"] for e in await listing(app, "status=dead")] == [event_id]


async def test_replayed_dead_letter_turns_the_event_delivered(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.status = 400
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    _, published = await app.publish("t", {"body": {}})
    event = await event_where(app, published["event_id"], lambda e: e["status"] == "dead")
    [state] = event["subscribers"]
    sink.status = 200
    status, _ = await app.call("POST", f"/dead/{state['dead_letter_id']}/replay", headers=app.admin)
    assert status == 202
    event = await event_where(app, published["event_id"], lambda e: e["status"] == "delivered")
    [state] = event["subscribers"]
    assert state["subscriber_id"] == subscriber["id"] and state["dead_letter_id"] is None
    assert [a["status"] for a in state["attempts"]] == [400, 200]


async def test_deleted_subscriber_is_skipped(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    _, published = await app.publish("t", {"body": {}})
    event = await event_where(app, published["event_id"], lambda e: e["status"] == "pending")
    assert states(event) == {subscriber["id"]: "pending"}
    await app.call("DELETE", f"/subscribers/{subscriber['id']}", headers=app.admin)
    event = await event_where(app, published["event_id"], lambda e: e["status"] == "skipped")
    assert states(event) == {subscriber["id"]: "skipped"}


# --- stats -----------------------------------------------------------------------------


def nearest_rank(values: list[float], fraction: float) -> float:
    return sorted(values)[max(1, math.ceil(fraction * len(values))) - 1]


async def test_subscriber_stats(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(quick_retries=0, retry_schedule=(3600,))
    subscriber = await app.add_subscriber(topic="s", target_url=sink.url())
    path = f"/subscribers/{subscriber['id']}/stats"
    status, empty = await app.call("GET", path, headers=app.admin)
    window = {"attempts": 0, "delivered": 0, "failed": 0, "success_rate": None}
    window |= {"p50_ms": None, "p99_ms": None}
    expected = {"subscriber_id": subscriber["id"], "last_hour": window, "last_day": window}
    assert (status, empty) == (200, {**expected, "last_error": None})

    sink.script.extend([200, 200, 500, 200])
    ids = []
    for i in range(4):
        ids.append((await app.publish("s", {"body": {"i": i}}))[1]["event_id"])
        await sink.wait_for(i + 1)
    hour_ago = time.time() - 2 * 3600
    await app.service.db.write(  # an attempt of two hours ago: in the day, not in the hour
        [
            (
                "INSERT INTO attempts (event_id, subscriber_id, attempt, at, duration_ms, "
                "status, outcome, error) VALUES ('old', ?, 1, ?, 5000, 502, 'transient', "
                "'HTTP 502')",
                (subscriber["id"], hour_ago),
            )
        ]
    )

    async def four_in_the_hour() -> Any:
        stats = (await app.call("GET", path, headers=app.admin))[1]
        return stats if stats["last_hour"]["attempts"] == 4 else None

    stats = await eventually(four_in_the_hour, "4 attempts in the stats")
    rows = await app.service.db.fetchall("SELECT duration_ms FROM attempts WHERE event_id != 'old'")
    hour = [row[0] for row in rows]
    day = [*hour, 5000.0]
    assert stats["last_hour"] == {
        "attempts": 4,
        "delivered": 3,
        "failed": 1,
        "success_rate": 0.75,
        "p50_ms": nearest_rank(hour, 0.5),
        "p99_ms": max(hour),
    }
    assert stats["last_day"] == {
        "attempts": 5,
        "delivered": 3,
        "failed": 2,
        "success_rate": 0.6,
        "p50_ms": nearest_rank(day, 0.5),
        "p99_ms": 5000.0,
    }
    last = stats["last_error"]
    assert last["event_id"] == ids[2] and last["status"] == 500 and last["attempt"] == 1
    assert last["outcome"] == "transient" and last["error"] == "HTTP 500: status 500"
    assert last["at"] > hour_ago


# --- retention -------------------------------------------------------------------------


async def test_retention_purge_removes_old_events_and_attempts_but_keeps_needed_events(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(quick_retries=0, retry_schedule=(3600,))
    await app.add_subscriber(topic="ok", target_url=sink.url("/ok"))
    await app.add_subscriber(topic="slow", target_url=sink.url("/slow"))
    _, ok = await app.publish("ok", {"body": {}})
    await event_where(app, ok["event_id"], lambda e: e["status"] == "delivered")
    sink.status = 503
    _, slow = await app.publish("slow", {"body": {}})  # its job waits an hour for a retry
    await event_where(app, slow["event_id"], lambda e: e["status"] == "failed")
    unmatched = await publish_as(app, "svc", "nobody", {"body": {}})
    await app.service.event_log.flush()
    db = app.service.db
    await db.write(
        [
            ("UPDATE events SET received_at = received_at - ?", (8 * DAY,)),
            ("UPDATE attempts SET at = at - ? WHERE event_id = ?", (8 * DAY, slow["event_id"])),
        ]
    )
    assert await app.count("attempts") == 2 and await app.count("jobs") == 1

    now = time.time()
    purged = await app.service.event_log.purge(now - app.service.settings.log_retention, now)
    assert purged == {"events": 2, "attempts": 1}
    rows = await db.fetchall("SELECT id FROM events")
    assert [row[0] for row in rows] == [slow["event_id"]]  # its job still needs it
    assert await app.count("attempts") == 0  # ok's went with its event, slow's by age
    for gone in (ok["event_id"], unmatched):
        assert (await app.call("GET", f"/events/{gone}", headers=app.admin))[0] == 404
    assert [e["id"] for e in await listing(app, "")] == [slow["event_id"]]


@pytest.mark.parametrize("log_payloads", [False, True])
async def test_payloads_kept_only_when_logged(
    log_payloads: bool, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(log_payloads=log_payloads)
    await app.add_subscriber(topic="t", target_url=sink.url())
    payload = {"body": {"secret": "s3"}, "headers": {"X-A": "1"}}
    _, matched = await app.publish("t", payload)
    unmatched = await publish_as(app, "svc", "nobody", payload)
    await event_where(app, matched["event_id"], lambda e: e["status"] == "delivered")
    await app.service.event_log.flush()
    now = time.time()
    await app.service.event_log.purge(now - app.service.settings.log_retention, now)

    stored = {
        row[0]: row[1] for row in await app.service.db.fetchall("SELECT id, payload FROM events")
    }
    shown = {}
    for event_id in (matched["event_id"], unmatched):
        _, event = await app.call("GET", f"/events/{event_id}", headers=app.admin)
        shown[event_id] = event["payload"]
        assert event["payload_size"] == len(orjson.dumps(payload))
    if log_payloads:
        assert list(shown.values()) == [payload, payload]
        assert all(orjson.loads(blob) == payload for blob in stored.values())
    else:
        assert list(shown.values()) == [None, None]
        assert list(stored.values()) == [b"", b""]


# --- batching --------------------------------------------------------------------------


async def test_rows_still_buffered_at_shutdown_are_written(tmp_path: Path):
    """Also when a batch fills up just as the writer task is cancelled (on Python 3.11,
    asyncio.wait_for lost such a cancel and the shutdown waited forever)."""
    settings = Settings(jwt_secret=SECRET, db_name=str(tmp_path / "s.db"), consumer_concurrency=0)
    service = Switchd(settings)
    await service.start()
    answers = [
        await service.publish("nobody", "svc", {"body": {}}) for _ in range(event_log.BATCH_ROWS)
    ]
    assert service.event_log.buffered == event_log.BATCH_ROWS  # no await gave way to the writer
    await asyncio.wait_for(service.stop(), timeout=10)
    db = Database(settings.db_name)
    await db.open()
    try:
        rows = await db.fetchall("SELECT id, matched FROM events ORDER BY rowid")
        assert [tuple(row) for row in rows] == [(a["event_id"], "[]") for a in answers]
    finally:
        await db.close()


async def test_buffer_drops_the_oldest_rows_while_the_database_refuses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(event_log, "MAX_BUFFERED", 3)
    metrics = Metrics()
    log = EventLog(Database(str(tmp_path / "never-opened.db")), metrics, keep_payloads=False)
    events = [Event(f"e{i}", "t", "svc", {}, b"{}", time.time()) for i in range(5)]
    for event in events:
        log.record_event(event, [])
    with pytest.raises(RuntimeError, match="not open"):
        await log.flush()
    assert log.buffered == 3
    assert [params[0] for _, params in log._rows] == ["e2", "e3", "e4"]
    assert metrics.registry.get_sample_value("switchd_event_log_dropped_total") == 2


async def test_event_row_of_jobs_stored_locally_is_completed(
    start_switchd: StartSwitchd, sink: Sink
):
    """What the Faktory fallback does: the jobs Faktory refused are stored locally (their
    event row naming only their subscribers), then the log records the whole event."""
    app = await start_switchd(consumer_concurrency=0)
    a = await app.add_subscriber(topic="t", target_url=sink.url("/a"))
    b = await app.add_subscriber(topic="t", target_url=sink.url("/b"))
    event = Event(str(uuid.uuid4()), "t", "svc", {"body": {}}, b'{"body":{}}', time.time())
    await app.service.local_queue.enqueue(event, [app.service.registry.by_id[b["id"]]])
    app.service.event_log.record_event(event, [a["id"], b["id"]])
    await app.service.event_log.flush()
    row = await app.service.db.fetchone("SELECT matched, payload FROM events")
    assert row is not None
    assert orjson.loads(row[0]) == [a["id"], b["id"]] and row[1] == event.payload_json


@pytest.fixture
async def faktory_double() -> AsyncIterator[FaktoryDouble]:
    double = FaktoryDouble("pw", backoff_scale=0.01, reservation_scale=0.05)
    await double.start()
    yield double
    await double.stop()


async def test_events_on_faktory_are_logged(
    faktory_double: FaktoryDouble, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(faktory_url=faktory_double.url, production_queue="log")
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    _, published = await app.publish("t", {"body": {"n": 1}})
    unmatched = await publish_as(app, "svc", "nobody", {"body": {}})
    event = await event_where(app, published["event_id"], lambda e: e["status"] == "delivered")
    assert event["matched"] == [subscriber["id"]] and await app.count("jobs") == 0
    [state] = event["subscribers"]
    assert [(a["status"], a["next_retry_at"]) for a in state["attempts"]] == [(200, None)]
    listed = [(e["id"], e["status"]) for e in await listing(app, "")]
    assert listed == [(unmatched, "unmatched"), (published["event_id"], "delivered")]


# --- POST /subscribers/{id}/test ---------------------------------------------------------


async def test_filter_matches_the_default_sample(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    path = f"/subscribers/{subscriber['id']}/test"
    assert await app.call("POST", path, headers=app.admin) == (
        200,
        {"match": True, "error": None, "delivery": None},
    )
    assert sink.requests == [] and await listing(app, "") == []


async def test_no_match_names_the_filter_error(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    subscriber = await app.add_subscriber(
        topic="t", target_url=sink.url(), filter_expression='data["body"]["x"] == 1'
    )
    path = f"/subscribers/{subscriber['id']}/test"
    status, answer = await app.call("POST", path, json={"deliver": True}, headers=app.admin)
    assert (status, answer) == (200, {"match": False, "error": "KeyError: 'x'", "delivery": None})
    sample = {"payload": {"body": {"x": 2}}, "deliver": True}
    status, answer = await app.call("POST", path, json=sample, headers=app.admin)
    assert (status, answer) == (200, {"match": False, "error": None, "delivery": None})
    await asyncio.sleep(0.1)
    assert sink.requests == []


async def test_real_test_delivery_reaches_the_sink_and_is_logged(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    subscriber = await app.add_subscriber(
        topic="t", target_url=sink.url("/hook"), filter_expression='data["body"]["x"] == 1'
    )
    _, subscriber = await app.call(  # with a signing secret
        "PATCH", f"/subscribers/{subscriber['id']}", json={"secret": True}, headers=app.admin
    )
    path = f"/subscribers/{subscriber['id']}/test"
    sample = {"payload": {"body": {"x": 1}, "headers": {"X-T": "yes"}}, "deliver": True}
    status, answer = await app.call("POST", path, json=sample, headers=app.admin)
    assert status == 200 and answer["match"] is True and answer["error"] is None
    delivery = answer["delivery"]
    assert delivery["outcome"] == "delivered" and delivery["status"] == 200
    assert delivery["error"] is None and delivery["duration_ms"] > 0
    [request] = sink.requests
    assert request.path == "/hook" and request.json() == {"x": 1}
    assert request.headers["X-T"] == "yes"
    assert request.headers["X-Switch-Event-Id"] == delivery["event_id"]
    Webhook(subscriber["secret"]).verify(request.body, dict(request.headers))

    _, event = await app.call("GET", f"/events/{delivery['event_id']}", headers=app.admin)
    assert event["test"] is True and event["status"] == "delivered"
    assert event["topic"] == "t" and event["author"] == "ops"
    [state] = event["subscribers"]
    assert [(a["attempt"], a["status"]) for a in state["attempts"]] == [(1, 200)]


async def test_failed_test_delivery_is_sent_once_without_retry_or_dead_letter(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.status = 503
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url(), enabled=False)
    path = f"/subscribers/{subscriber['id']}/test"
    status, answer = await app.call("POST", path, json={"deliver": True}, headers=app.admin)
    delivery = answer["delivery"]
    assert status == 200 and delivery["outcome"] == "transient" and delivery["status"] == 503
    assert delivery["error"] == "HTTP 503: status 503"
    await asyncio.sleep(0.3)
    assert len(sink.requests) == 1  # a disabled subscriber can be tested too
    assert await app.count("jobs") == 0 and await app.count("dead_letters") == 0
    [event] = await listing(app, "status=failed")
    assert event["id"] == delivery["event_id"] and event["test"] is True


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"deliver": "yes"}, "invalid_request"),
        ({"payload": {}, "extra": 1}, "invalid_request"),
        ({"payload": 5}, "invalid_payload"),
        ({"payload": {"http_method": "BREW"}}, "invalid_payload"),
        ([1], "invalid_json"),
    ],
)
async def test_test_endpoint_refuses_bad_bodies(
    body: Any, code: str, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    path = f"/subscribers/{subscriber['id']}/test"
    status, answer = await app.call("POST", path, json=body, headers=app.admin)
    assert status == 400 and answer["error"]["code"] == code, answer


async def test_overview_series_are_index_range_scans(tmp_path: Path) -> None:
    """The console polls the per-minute series every few seconds: each one must read an
    index range, never scan its whole table."""
    from switchd.overview import COUNT_PER_BUCKET, SERIES

    db = Database(str(tmp_path / "plan.db"))
    await db.open()
    try:
        for table, column, extra in SERIES.values():
            sql = COUNT_PER_BUCKET.format(table=table, column=column, extra=extra, bucket=60)
            plan = " ".join(
                str(r[3]) for r in await db.fetchall("EXPLAIN QUERY PLAN " + sql, (0, 0, 1))
            )
            assert plan.startswith("SEARCH") and f"({column}>? AND {column}<?)" in plan, plan
    finally:
        await db.close()
