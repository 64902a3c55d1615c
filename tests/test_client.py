"""switchd.client: the seed-compatible sync `publish` and the AsyncSwitchClient, on real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from switchd import client as client_module
from switchd.auth import ADMIN, PUBLISHER, verify
from switchd.client import (
    AsyncSwitchClient,
    SwitchConnectionError,
    SwitchError,
    encode_payload,
    mint_seed_token,
    mint_token,
    publish,
    publish_event,
)
from tests.conftest import ADMIN_SECRET, SECRET, Running, Sink, StartSwitchd, free_port, start_site

# Test vectors from the seed SDK's own tests (switcher, tests for publisher.py).
SEED_ENCODED = {"some_payload": "to_encode"}, "eyJzb21lX3BheWxvYWQiOiAidG9fZW5jb2RlIn0="
SEED_PUBLISHED = {"body": {"hello": "world"}}, "eyJib2R5IjogeyJoZWxsbyI6ICJ3b3JsZCJ9fQ=="


@dataclass
class Captured:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Capture:
    """A tiny HTTP server on 127.0.0.1 that records requests and answers one fixed reply."""

    url: str = ""
    requests: list[Captured] = field(default_factory=list)
    status: int = 202
    reply: bytes = b'{"event_id": "e-1", "topic": "t", "matched": 0, "subscribers": []}'

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            Captured(request.method, request.path, request.headers, await request.read())
        )
        return web.Response(status=self.status, body=self.reply)


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    recorder = Capture()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner, recorder.url = await start_site(app)
    yield recorder
    await runner.cleanup()


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The seed SDK's environment: the secret is set, the URL is set per test."""
    monkeypatch.setenv("SWITCH_JWT_SECRET", SECRET)
    monkeypatch.delenv("SWITCH_BASE_URL", raising=False)
    return monkeypatch


def admin_client(app: Running, **kwargs: Any) -> AsyncSwitchClient:
    return AsyncSwitchClient(app.url, secret=SECRET, admin_secret=ADMIN_SECRET, **kwargs)


# --- the synchronous, seed-compatible publish ---------------------------------------


def test_payload_encoding_matches_the_seed_test_vectors():
    for options, expected in (SEED_ENCODED, SEED_PUBLISHED):
        assert encode_payload(options) == expected


def test_seed_token_holds_only_the_author_claim():
    token = mint_seed_token(SECRET, "me")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"Author": "me"}


def test_mint_token_is_switchd_token():
    token = mint_token(ADMIN_SECRET, "ops", admin=True, ttl=60)
    claims = jwt.decode(token, ADMIN_SECRET, algorithms=["HS256"])
    assert claims["author"] == "ops" and claims["scope"] == "admin"
    assert claims["exp"] - claims["iat"] == 60
    scoped = jwt.decode(mint_token(SECRET, "svc", topics=["a.*"]), SECRET, algorithms=["HS256"])
    assert scoped["topics"] == ["a.*"] and "scope" not in scoped


def test_base_url_comes_from_seed_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SWITCH_BASE_URL", raising=False)
    assert client_module.default_base_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("SWITCH_BASE_URL", "http://switch.internal:9000/")
    assert client_module.default_base_url() == "http://switch.internal:9000"


async def test_sync_publish_sends_exactly_the_seed_request(seed_env, capture: Capture):
    seed_env.setenv("SWITCH_BASE_URL", capture.url)
    options, expected_payload = SEED_PUBLISHED

    assert await asyncio.to_thread(publish, "test", "test_author", options) is True

    [request] = capture.requests
    assert (request.method, request.path) == ("POST", "/publish")
    # Byte for byte what the seed's `requests.post(data=json.dumps(payload))` sent.
    assert request.body == json.dumps({"Payload": expected_payload, "Topic": "test"}).encode()
    assert json.loads(request.body) == {"Payload": expected_payload, "Topic": "test"}
    assert "Content-Type" not in request.headers
    assert "Idempotency-Key" not in request.headers
    scheme, token = request.headers["Authorization"].split(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, SECRET, algorithms=["HS256"]) == {"Author": "test_author"}


async def test_publish_event_returns_the_answer_and_sends_idempotency_key(capture: Capture):
    answer = await asyncio.to_thread(
        publish_event, "t", "svc", {}, base_url=capture.url + "/", secret=SECRET,
        idempotency_key="k-1",
    )  # fmt: skip
    assert answer["event_id"] == "e-1"
    [request] = capture.requests
    assert request.headers["Idempotency-Key"] == "k-1"
    assert json.loads(base64.b64decode(json.loads(request.body)["Payload"])) == {}


async def test_sync_publish_accepts_an_empty_seed_style_answer(seed_env, capture: Capture):
    capture.status, capture.reply = 200, b""  # the Go seed answered 200 with no body
    assert await asyncio.to_thread(publish, "t", "svc", None, base_url=capture.url) is True
    assert json.loads(capture.requests[0].body)["Payload"] == encode_payload({})


async def test_sync_publish_rejects_wrong_argument_types_like_the_seed(seed_env, capture):
    seed_env.setenv("SWITCH_BASE_URL", capture.url)
    assert publish(42, "svc", {}) is False  # type: ignore[arg-type]
    assert publish("t", "svc", ["not", "a", "dict"]) is False  # type: ignore[arg-type]
    assert capture.requests == []


def test_sync_publish_without_a_secret_says_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SWITCH_JWT_SECRET", raising=False)
    with pytest.raises(SwitchError) as info:
        publish("t", "svc", {})
    assert info.value.code == "missing_secret" and "SWITCH_JWT_SECRET" in info.value.message


def test_sync_publish_to_a_closed_port_is_a_connection_error(seed_env):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SwitchConnectionError) as info:
        publish("t", "svc", {}, base_url=url, timeout=5)
    assert isinstance(info.value, ConnectionError)
    assert info.value.status == 0 and url in info.value.message


async def test_sync_publish_reaches_the_sink_through_switchd(
    seed_env, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    seed_env.setenv("SWITCH_BASE_URL", app.url)
    await app.add_subscriber(
        topic="orders",
        target_url=sink.url("/orders/:order"),
        filter_expression='data["body"]["total"] > 10',
    )
    options = {
        "body": {"total": 12.5, "items": ["a"]},
        "headers": {"X-Trace": "t-1"},
        "query_params": {"page": 2},
        "path_params": {"order": "A/1"},
        "http_method": "patch",
    }
    assert await asyncio.to_thread(publish, "orders", "billing", {"body": {"total": 1}})
    assert await asyncio.to_thread(publish, "orders", "billing", options) is True

    [request] = await sink.wait_for(1)
    assert (request.method, request.path, request.query) == ("PATCH", "/orders/A%2F1", "page=2")
    assert request.json() == {"total": 12.5, "items": ["a"]}
    assert request.headers["X-Trace"] == "t-1"
    assert request.headers["X-Switch-Author"] == "billing"
    assert request.headers["X-Switch-Topic"] == "orders"
    await asyncio.sleep(0.2)
    assert len(sink.requests) == 1  # the filter dropped the first event


async def test_idempotency_key_reaches_switchd(seed_env, start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    await app.add_subscriber(topic="pay", target_url=sink.url())
    kwargs = {"base_url": app.url, "idempotency_key": "pay-1"}
    first = await asyncio.to_thread(publish_event, "pay", "svc", {"body": {}}, **kwargs)
    again = await asyncio.to_thread(publish_event, "pay", "svc", {"body": {}}, **kwargs)
    assert first["event_id"] == again["event_id"] and first["matched"] == 1
    async with admin_client(app, author="svc") as switch:
        third = await switch.publish("pay", {"body": {}}, idempotency_key="pay-1")
    assert third["event_id"] == first["event_id"]
    await sink.wait_for(1)
    await asyncio.sleep(0.2)
    assert len(sink.requests) == 1


async def test_sync_publish_maps_switchd_errors(seed_env, start_switchd: StartSwitchd):
    app = await start_switchd()
    seed_env.setenv("SWITCH_BASE_URL", app.url)
    cases = [
        ({"secret": "not-the-" + SECRET}, ("t", "svc", {}), 401, "unauthorized"),
        ({}, ("", "svc", {}), 400, "invalid_topic"),
        ({}, ("t", "svc", {"http_method": "BREW"}), 400, "invalid_payload"),
    ]
    for kwargs, args, status, code in cases:
        with pytest.raises(SwitchError) as info:
            await asyncio.to_thread(publish, *args, **kwargs)
        assert (info.value.status, info.value.code) == (status, code)
        assert info.value.message
    assert await app.count("events") == 0


# --- AsyncSwitchClient ----------------------------------------------------------------


async def test_async_publish_and_subscriber_round_trip(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    async with admin_client(app) as switch:
        created = await switch.create_subscriber(
            topic="users", target_url=sink.url("/users/:id"), description="crm", secret=True
        )
        assert created["secret"].startswith("whsec_")
        sid = created["id"]

        assert [s["id"] for s in await switch.list_subscribers()] == [sid]
        assert [s["id"] for s in await switch.list_subscribers(topic="users")] == [sid]
        assert await switch.list_subscribers(topic="other") == []
        fetched = await switch.get_subscriber(sid)
        assert fetched["description"] == "crm" and "secret" not in fetched

        updated = await switch.update_subscriber(sid, description="crm v2")
        assert updated["description"] == "crm v2"
        assert (await switch.refresh())["subscribers"] == 1

        answer = await switch.publish(
            "users", {"body": {"name": "Ada"}, "path_params": {"id": 7}}, idempotency_key="u-7"
        )
        assert answer["matched"] == 1 and answer["subscribers"] == [sid]
        [request] = await sink.wait_for(1)
        assert request.path == "/users/7" and request.json() == {"name": "Ada"}
        assert request.headers["X-Switch-Event-Id"] == answer["event_id"]
        assert request.headers["X-Switch-Author"] == "switchd-client"
        assert "webhook-signature" in request.headers

        seeded = await switch.publish("users", encode_payload({"body": {"name": "Bob"}}))
        assert seeded["matched"] == 1
        await sink.wait_for(2)
        [endpoint] = (await switch.list_endpoints())["endpoints"]
        assert endpoint["origin"] == sink.base_url and endpoint["circuit"] == "closed"
        assert (await switch.get_subscriber(sid))["endpoint"]["origin"] == sink.base_url

        await switch.delete_subscriber(sid)
        with pytest.raises(SwitchError) as info:
            await switch.get_subscriber(sid)
        assert (info.value.status, info.value.code) == (404, "not_found")
        assert await switch.list_subscribers() == []


async def test_async_client_maps_errors(start_switchd: StartSwitchd):
    app = await start_switchd()
    async with (
        AsyncSwitchClient(app.url) as anonymous,
        AsyncSwitchClient(app.url, token="garbage") as forged,
        AsyncSwitchClient(app.url, token=mint_token(SECRET, "svc")) as publisher,
        AsyncSwitchClient(app.url, secret=SECRET) as publishers_secret,
        admin_client(app) as admin,
    ):
        sub = {"topic": "t", "target_url": "http://x"}
        cases = [
            (lambda: anonymous.publish("t", {}), 401, "unauthorized"),
            (lambda: forged.refresh(), 401, "unauthorized"),
            (lambda: publisher.create_subscriber(**sub), 403, "forbidden"),
            (lambda: publishers_secret.create_subscriber(**sub), 403, "forbidden"),
            (lambda: admin.create_subscriber(**sub, description=7), 400, None),
            (lambda: admin.create_subscriber(topic="t", target_url="ftp://x"), 400, None),
            (lambda: admin.create_subscriber(**sub, filter_expression="("), 400, None),
            (lambda: admin.publish("t", {"headers": {"bad header": "x"}}), 400, None),
            (lambda: admin.publish("", {}), 400, "invalid_topic"),
            (lambda: admin.get_subscriber("no-such-id"), 404, "not_found"),
            (lambda: admin.update_subscriber("no/such", description="x"), 404, "not_found"),
            (lambda: admin.delete_subscriber("no-such-id"), 404, "not_found"),
        ]
        for call, status, code in cases:
            with pytest.raises(SwitchError) as info:
                await call()
            assert info.value.status == status, info.value
            assert code is None or info.value.code == code, info.value
            assert info.value.message
        answer = await publisher.publish("t", {})  # a plain publisher token may publish
        assert (answer["topic"], answer["matched"], answer["subscribers"]) == ("t", 0, [])


async def test_each_call_sends_its_kind_of_token(capture: Capture):
    """Publishing and refresh: a publisher token (no admin scope); management: an admin
    token from the admin secret; health and readiness: none. Without credentials of its
    kind a call sends the other kind's."""
    capture.status, capture.reply = 200, b'{"subscribers": []}'
    async with AsyncSwitchClient(
        capture.url, secret=SECRET, admin_secret=ADMIN_SECRET, author="me"
    ) as both:
        await both.publish("t", {})
        await both.refresh()
        await both.list_subscribers()
        await both.health()
    async with AsyncSwitchClient(
        capture.url, admin_token=mint_token(ADMIN_SECRET, "ops", True)
    ) as admin_only:
        await admin_only.publish("t", {})
    tokens = [r.headers.get("Authorization", "").removeprefix("Bearer ") for r in capture.requests]
    assert verify(tokens[0], SECRET, PUBLISHER) == verify(tokens[1], SECRET, PUBLISHER)
    assert verify(tokens[0], SECRET, PUBLISHER).author == "me"
    assert "scope" not in jwt.decode(tokens[0], SECRET, algorithms=["HS256"])
    management = verify(tokens[2], ADMIN_SECRET, ADMIN)
    assert management.admin and management.author == "me"
    assert tokens[3] == ""  # /healthz gets no token
    assert verify(tokens[4], ADMIN_SECRET, ADMIN).admin  # falls back to the admin token


async def test_async_client_connection_error():
    async with AsyncSwitchClient(f"http://127.0.0.1:{free_port()}", secret=SECRET) as switch:
        with pytest.raises(SwitchConnectionError) as info:
            await switch.health()
    assert info.value.code == "connection_failed"


async def test_health_ready_and_session_ownership(start_switchd: StartSwitchd):
    app = await start_switchd()
    async with aiohttp.ClientSession() as session:
        async with AsyncSwitchClient(app.url, session=session) as switch:
            assert await switch.health() == {"status": "ok"}
            assert (await switch.ready())["status"] == "ready"
        assert not session.closed  # a session passed in stays the caller's
    switch = AsyncSwitchClient(app.url)
    async with switch:
        await switch.health()
        owned = switch._session
    assert owned is not None and owned.closed


async def test_replay_bulk_needs_a_selector():
    async with AsyncSwitchClient("http://127.0.0.1:1") as switch:
        with pytest.raises(ValueError):
            await switch.replay_dead_bulk()


async def test_dead_letters_through_the_client(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    async with admin_client(app) as switch:
        assert await switch.list_dead() == {"dead_letters": [], "next_cursor": None}
        sink.status = 400  # permanent failure: dead letter at once
        sub = await switch.create_subscriber(topic="d", target_url=sink.url())
        first = await switch.publish("d", {"body": {"n": 1}})
        second = await switch.publish("d", {"body": {"n": 2}})
        dead1 = await _wait_dead(switch, sub["id"], first["event_id"])
        dead2 = await _wait_dead(switch, sub["id"], second["event_id"])
        assert (dead1["topic"], dead1["last_status"]) == ("d", 400)
        assert (await switch.get_dead(dead1["id"]))["payload"] == {"body": {"n": 1}}

        page = await switch.list_dead(subscriber_id=sub["id"], limit=1)
        assert len(page["dead_letters"]) == 1 and page["next_cursor"] is not None
        rest = await switch.list_dead(subscriber_id=sub["id"], limit=1, cursor=page["next_cursor"])
        ids = {page["dead_letters"][0]["id"], rest["dead_letters"][0]["id"]}
        assert ids == {dead1["id"], dead2["id"]}

        sink.status = 200
        assert (await switch.replay_dead(dead1["id"]))["replayed"] == 1
        await sink.wait_for(3)
        assert (await switch.replay_dead_bulk(subscriber_id=sub["id"]))["replayed"] == 1
        await sink.wait_for(4)
        assert (await switch.replay_dead_bulk(topic="d"))["replayed"] == 0
        replayed = (await switch.list_dead(replayed=True))["dead_letters"]
        assert {r["id"] for r in replayed} == ids
        assert sorted(r.json()["n"] for r in sink.requests[2:]) == [1, 2]

        await switch.delete_dead(dead1["id"])
        for call in (switch.get_dead, switch.replay_dead, switch.delete_dead):
            with pytest.raises(SwitchError) as info:
                await call(dead1["id"])
            assert (info.value.status, info.value.code) == (404, "not_found")


async def _wait_dead(switch: AsyncSwitchClient, subscriber_id: str, event_id: str) -> dict:
    for _ in range(200):
        page = await switch.list_dead(subscriber_id=subscriber_id, event_id=event_id)
        if page["dead_letters"]:
            return page["dead_letters"][0]
        await asyncio.sleep(0.05)
    raise AssertionError("no dead letter appeared")
