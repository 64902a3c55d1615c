"""Publish → filter → SQLite queue → consumers → HTTP delivery, end to end on real sockets."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import structlog.testing
from standardwebhooks.webhooks import Webhook

from switchd import __version__
from switchd.models import Job, Outcome
from switchd.queue.base import Disposition
from switchd.queue.local import LocalQueue
from tests.conftest import Running, Sink, StartSwitchd, seed_body, seed_token

SEED_FILTER = (
    'data["body"]["x"] == 1 and data["headers"]["y"] == "z" '
    'or data["special_key"] == "special value"'
)


async def test_seed_sdk_request_is_delivered_as_described(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    subscriber = await app.add_subscriber(
        topic="orders", target_url=sink.url("/customers/:customer/orders/:order?src=switch")
    )
    payload = {
        "body": {"id": 7, "items": ["a", "b"]},
        "headers": {"X-Trace": "abc", "Connection": "close", "Host": "evil.example"},
        "query_params": {"page": 2, "tag": ["x", "y"]},
        "path_params": {"customer": "ACME Corp/EU", "order": 42},
        "http_method": "put",
    }
    status, body = await app.call(
        "POST",
        "/publish",
        data=seed_body("orders", payload),
        headers={"Authorization": f"bearer {seed_token()}"},
        skip_auto_headers=["Content-Type"],
    )
    assert status == 202, body
    assert body["matched"] == 1 and body["subscribers"] == [subscriber["id"]]
    assert body["topic"] == "orders"

    [request] = await sink.wait_for(1)
    assert request.method == "PUT"
    assert request.path == "/customers/ACME%20Corp%2FEU/orders/42"
    assert request.query == "src=switch&page=2&tag=x&tag=y"
    assert request.json() == {"id": 7, "items": ["a", "b"]}
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Trace"] == "abc"
    assert headers["Host"].startswith("127.0.0.1:")
    assert headers["User-Agent"] == f"switchd/{__version__}"
    assert headers["X-Switch-Topic"] == "orders"
    assert headers["X-Switch-Event-Id"] == body["event_id"]
    assert headers["X-Switch-Author"] == "svc"
    assert headers["webhook-id"] == body["event_id"]
    assert "webhook-signature" not in headers


async def test_signature_verifies_with_standardwebhooks(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    created = await app.add_subscriber(topic="t", target_url=sink.url(), secret=True)
    assert created["secret"].startswith("whsec_")
    status, listed = await app.call("GET", f"/subscribers/{created['id']}", headers=app.admin)
    assert status == 200 and "secret" not in listed and listed["has_secret"] is True

    await app.publish("t", {"body": {"amount": 10}})
    [request] = await sink.wait_for(1)
    verified = Webhook(created["secret"]).verify(request.body, dict(request.headers))
    assert verified == {"amount": 10}


async def test_seed_filter_examples(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    await app.add_subscriber(topic="f", target_url=sink.url("/seed"), filter_expression=SEED_FILTER)
    await app.add_subscriber(topic="f", target_url=sink.url("/true"), filter_expression="True")
    await app.add_subscriber(topic="f", target_url=sink.url("/empty"), filter_expression="")
    cases = [
        ({"body": {"x": 1}, "headers": {"y": "z"}}, 3),  # first clause true
        ({"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "special value"}, 3),
        ({"body": {"x": 2}, "headers": {"y": "z"}, "special_key": "other"}, 2),
        ({"body": {"x": 1}}, 2),  # data["headers"] is missing: an error, so no match
        ({"body": "not an object"}, 2),  # wrong type: no match, no crash
    ]
    expected_total = 0
    for payload, matched in cases:
        status, body = await app.publish("f", payload)
        assert status == 202 and body["matched"] == matched, (payload, body)
        expected_total += matched
    await sink.wait_for(expected_total)
    await asyncio.sleep(0.3)
    paths = [r.path for r in sink.requests]
    assert paths.count("/seed") == 2
    assert paths.count("/true") == paths.count("/empty") == len(cases)
    assert len(sink.requests) == expected_total
    assert (await app.call("GET", "/healthz"))[0] == 200


# The seed README's second example: the seed SDK sends `http_method` as the caller wrote it.
SEED_METHOD_FILTER = (
    'data["http_method"] == "post" and data["body"]["x"] and data["body"]["x"]["y"]'
)


async def seed_sdk_publish(app: Running, topic: str, payload: dict) -> tuple[int, dict]:
    """POST /publish exactly as the seed Python SDK does: base64 `Payload`, a `bearer`
    token with only an `Author` claim, no Content-Type."""
    return await app.call(
        "POST",
        "/publish",
        data=seed_body(topic, payload),
        headers={"Authorization": f"bearer {seed_token()}"},
        skip_auto_headers=["Content-Type"],
    )


async def test_filters_see_the_payload_as_published(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(log_payloads=True)
    subscriber = await app.add_subscriber(
        topic="m", target_url=sink.url("/m"), filter_expression=SEED_METHOD_FILTER
    )
    published = {"http_method": "post", "body": {"x": {"y": 1}}}
    status, body = await seed_sdk_publish(app, "m", published)
    assert status == 202, body
    assert body["matched"] == 1 and body["subscribers"] == [subscriber["id"]]
    [request] = await sink.wait_for(1)
    assert request.method == "POST"  # only the delivery request uses the normalised method
    assert request.json() == {"x": {"y": 1}}
    _, logged = await app.call("GET", f"/events/{body['event_id']}", headers=app.admin)
    assert logged["payload"] == published  # stored as published too
    status, upper = await seed_sdk_publish(app, "m", {**published, "http_method": "POST"})
    assert (status, upper["matched"]) == (202, 0)  # "POST" is not "post"
    await asyncio.sleep(0.3)
    assert len(sink.requests) == 1


async def test_transient_failures_then_success_delivers_once(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.script.extend([503, 503, 503])
    await app.add_subscriber(topic="t", target_url=sink.url())
    status, body = await app.publish("t", {"body": {"n": 1}})
    assert status == 202
    requests = await sink.wait_for(4)
    await asyncio.sleep(0.5)
    assert len(sink.requests) == 4  # three 503s (quick retries), one 200 (durable retry)
    assert {r.headers["X-Switch-Event-Id"] for r in requests} == {body["event_id"]}
    assert await app.count("jobs") == 0
    assert await app.count("dead_letters") == 0


async def test_permanent_failure_goes_to_dead_letters_at_once(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.status = 400
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    _, body = await app.publish("t", {"body": {"n": 1}})
    await sink.wait_for(1)
    dead = await _wait_for_dead(app)
    await asyncio.sleep(0.3)
    assert len(sink.requests) == 1
    assert dead["event_id"] == body["event_id"]
    assert dead["subscriber_id"] == subscriber["id"]
    assert dead["last_status"] == 400 and dead["attempts"] == 1
    assert "HTTP 400" in dead["last_error"]
    assert await app.count("jobs") == 0


async def test_retries_exhausted_go_to_dead_letters(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(retry_schedule=(0.05,), quick_retries=1)
    sink.status = 500
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {}})
    dead = await _wait_for_dead(app)
    assert len(sink.requests) == 4  # (1 + 1 quick retry) × (1 + 1 durable retry)
    assert dead["attempts"] == 4 and dead["last_status"] == 500


async def test_gone_disables_the_subscriber(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    sink.status = 410
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {}})
    await _wait_for_dead(app)
    _, shown = await app.call("GET", f"/subscribers/{subscriber['id']}", headers=app.admin)
    assert shown["enabled"] is False and "410" in shown["disabled_reason"]
    _, body = await app.publish("t", {"body": {}})
    assert body["matched"] == 0
    assert len(sink.requests) == 1


async def test_gone_is_logged_as_a_disable_only_when_the_disable_happened(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    sink.status = 410
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    writer = app.service.db._writer
    assert writer is not None
    refuse = "SELECT RAISE(ABORT, 'injected storage fault')"
    await writer.execute(f"CREATE TRIGGER fault BEFORE UPDATE ON subscribers BEGIN {refuse}; END")
    with structlog.testing.capture_logs() as logs:
        await app.publish("t", {"body": {}})
        await _wait_for_dead(app)
    events = [entry["event"] for entry in logs]
    assert "subscriber_disable_failed" in events and "subscriber_disabled" not in events
    [failed] = [entry for entry in logs if entry["event"] == "subscriber_disable_failed"]
    assert failed["subscriber_id"] == subscriber["id"] and "injected" in failed["error"]
    _, shown = await app.call("GET", f"/subscribers/{subscriber['id']}", headers=app.admin)
    assert shown["enabled"] is True  # the disable did not happen

    await writer.execute("DROP TRIGGER fault")
    with structlog.testing.capture_logs() as logs:
        await app.publish("t", {"body": {}})
        await _wait_for_dead(app, count=2)
    assert [e["event"] for e in logs].count("subscriber_disabled") == 1
    _, shown = await app.call("GET", f"/subscribers/{subscriber['id']}", headers=app.admin)
    assert shown["enabled"] is False


async def test_retry_after_is_honoured(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(quick_retry_max_wait=0.5, quick_retries=1)
    sink.script.append(429)
    sink.response_headers = {"Retry-After": "1"}  # above the quick cap: a durable retry
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {}})
    first, second = await sink.wait_for(2)
    assert second.at - first.at >= 0.95


async def test_concurrency_bounds_deliveries_in_flight(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=3)
    sink.delay = 0.2
    await app.add_subscriber(topic="t", target_url=sink.url())
    results = await asyncio.gather(*(app.publish("t", {"body": {"i": i}}) for i in range(12)))
    assert all(status == 202 for status, _ in results)
    requests = await sink.wait_for(12)
    assert sink.max_in_flight == 3
    assert sorted(r.json()["i"] for r in requests) == list(range(12))


async def test_202_means_the_jobs_are_committed(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url("/a"))
    await app.add_subscriber(topic="t", target_url=sink.url("/b"))
    results = await asyncio.gather(*(app.publish("t", {"body": {"i": i}}) for i in range(20)))
    event_ids = {body["event_id"] for _, body in results}
    with sqlite3.connect(app.service.settings.db_name) as other:  # another connection sees them
        rows = other.execute("SELECT event_id FROM jobs").fetchall()
    assert len(rows) == 40 and {r[0] for r in rows} == event_ids
    assert sink.requests == []


async def test_expired_lease_is_delivered_again(start_switchd: StartSwitchd, sink: Sink):
    producer = await start_switchd(consumer_concurrency=0)
    await producer.add_subscriber(topic="t", target_url=sink.url())
    _, body = await producer.publish("t", {"body": {"n": 1}})
    [leased] = await producer.service.queue.lease(1, 0.5)  # a consumer that then dies
    assert leased.event_id == body["event_id"]

    consumer = await start_switchd(consumer_concurrency=2)
    await asyncio.sleep(0.3)
    assert sink.requests == []  # still leased
    [request] = await sink.wait_for(1, timeout=5)
    assert request.headers["X-Switch-Event-Id"] == body["event_id"]
    await asyncio.sleep(0.2)
    assert await consumer.count("jobs") == 0


async def test_subscriber_deleted_before_delivery_drops_the_job(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {}})
    status, _ = await app.call("DELETE", f"/subscribers/{subscriber['id']}", headers=app.admin)
    assert status == 204
    consumer = await start_switchd(consumer_concurrency=1)
    for _ in range(50):
        if await consumer.count("jobs") == 0:
            break
        await asyncio.sleep(0.05)
    assert await consumer.count("jobs") == 0
    assert await consumer.count("dead_letters") == 0
    assert sink.requests == []


async def test_change_by_another_writer_reaches_publish_path(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    writer = await start_switchd(consumer_concurrency=0)  # stands in for the CLI
    await writer.add_subscriber(topic="t", target_url=sink.url())
    for _ in range(40):
        _, body = await app.publish("t", {"body": {}})
        if body["matched"]:
            break
        await asyncio.sleep(0.1)
    assert body["matched"] == 1
    await sink.wait_for(1)


async def test_refresh_reloads_subscribers(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url())
    status, body = await app.call(
        "GET", "/refresh", headers={"Authorization": f"bearer {seed_token()}"}
    )
    assert status == 200 and body == {"subscribers": 1}


async def test_readyz_turns_503_when_draining(start_switchd: StartSwitchd):
    app = await start_switchd()
    assert await app.call("GET", "/readyz") == (
        200,
        {"status": "ready", "queue": {"backend": "local"}},
    )
    app.service.draining = True
    status, body = await app.call("GET", "/readyz")
    assert status == 503 and any("draining" in r for r in body["reasons"])


async def _wait_for_dead(app, count: int = 1, timeout: float = 10.0) -> dict:
    """The first dead letter, once `count` are there."""
    for _ in range(int(timeout / 0.05)):
        rows = await app.service.db.fetchall("SELECT * FROM dead_letters ORDER BY id")
        if len(rows) >= count:
            return dict(rows[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} dead letters appeared")


async def test_purge_keeps_events_that_jobs_still_need(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="kept", target_url=sink.url())
    await app.publish("kept", {"body": {}})
    await app.service.db.write(
        [
            (
                "INSERT INTO events (id, topic, author, received_at, payload) "
                "VALUES ('old', 'gone', 'svc', 1.0, x'7b7d')",
                (),
            )
        ]
    )
    now = time.time()
    assert await app.service.event_log.purge(older_than=now + 1, now=now) == {"events": 1}
    rows = await app.service.db.fetchall("SELECT topic FROM events")
    assert [r["topic"] for r in rows] == ["kept"]


async def test_concurrent_publishes_share_group_commits(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    db = app.service.db
    commits, writes = db.commits, db.committed_writes
    results = await asyncio.gather(*(app.publish("t", {"body": {"i": i}}) for i in range(100)))
    assert all(status == 202 for status, _ in results)
    assert db.committed_writes - writes == 100
    print(f"100 publishes in {db.commits - commits} commits")
    assert db.commits - commits < 50  # many publishes per transaction
    assert await app.count("jobs") == 100


async def test_outcomes_committed_while_consumers_move_on_are_all_kept_at_stop(
    start_switchd: StartSwitchd, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A consumer takes its next job while its last outcome waits for a commit (slowed
    down here, as on a busy disk); stopping right after the sink got everything still
    waits for those commits, so every delivery is acked and logged."""
    settle = LocalQueue.settle

    async def slow_settle(self: LocalQueue, job: Job, outcome: Outcome) -> Disposition:
        await asyncio.sleep(0.3)
        return await settle(self, job, outcome)

    monkeypatch.setattr(LocalQueue, "settle", slow_settle)
    app = await start_switchd(consumer_concurrency=8)
    await app.add_subscriber(topic="t", target_url=sink.url())
    events = 40
    await asyncio.gather(
        *(app.service.publish("t", "svc", {"body": {"i": i}}) for i in range(events))
    )
    # Before any settle is done, each of the 8 consumers has delivered a second job.
    await sink.wait_for(16, timeout=0.25)
    await sink.wait_for(events)
    await app.service.stop()
    with sqlite3.connect(tmp_path / "switch.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
        outcomes = conn.execute("SELECT outcome, COUNT(*) FROM attempts GROUP BY 1").fetchall()
    assert outcomes == [("delivered", events)]
    assert sorted(r.json()["i"] for r in sink.requests) == list(range(events))
