"""Publisher and admin credentials against a real `switchd serve` over real HTTP: publisher
tokens never manage, admin tokens need SWITCH_ADMIN_JWT_SECRET, rotation through the
*_PREVIOUS secrets, and topic-scoped publishing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from switchd.auth import mint
from switchd.client import publish as seed_publish
from tests.conftest import ADMIN_SECRET, SECRET, Sink, clean_environ
from tests.test_process import Server, run_cli

pytestmark = pytest.mark.timeout(90)

ADMIN = mint(ADMIN_SECRET, "ops", admin=True)
FORGERIES = {  # signed with the publishers' secret, claiming admin every way there is
    "Bearer": mint(SECRET, "ops", admin=True),
    "bearer": jwt.encode({"Author": "ops", "scope": ["admin"]}, SECRET, algorithm="HS256"),
}
UNKNOWN = "an-unknown-secret-of-at-least-thirty-two-bytes"
ADMIN_SCHEME = [{"adminToken": []}]


async def send(
    server: Server,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    scheme: str = "Bearer",
    **headers: str,
) -> tuple[int, Any, dict[str, str]]:
    """One request; the status, the decoded JSON answer (or text) and the headers."""
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    data = None if body is None else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, server.url + path, data=data, headers=headers) as answer,
    ):
        raw = await answer.read()
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = raw.decode()
        return answer.status, decoded, dict(answer.headers)


async def admin_operations(server: Server) -> list[tuple[str, str]]:
    """(METHOD, path template) of every admin-only operation the served document lists."""
    status, document, _ = await send(server, "GET", "/openapi.json")
    assert status == 200
    operations = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and operation.get("security") == ADMIN_SCHEME
    ]
    assert len(operations) >= 16, operations  # as many as today, or more
    return operations


def concrete(path: str, ids: dict[str, str]) -> str:
    """`path` with `{id}` replaced by an existing record of its collection."""
    if "{id}" not in path:
        return path
    collection = path.split("/")[1]
    assert collection in ids, f"give test_credentials an existing id for /{collection}/{{id}}"
    return path.replace("{id}", ids[collection])


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def snapshot(server: Server) -> dict[str, Any]:
    """What the management API shows: subscribers, dead letters, events, totals, queue."""
    state = {}
    for path in ("/subscribers", "/dead", "/events", "/overview"):
        status, body, _ = await send(server, "GET", path, ADMIN)
        assert status == 200, body
        state[path] = body
    overview = state.pop("/overview")
    state["totals"] = overview["totals"]
    state["depth"] = overview["queue"]["depth"]
    return state


async def published_total(server: Server) -> float:
    _, text, _ = await send(server, "GET", "/metrics")
    lines = [line for line in text.splitlines() if line.startswith("switchd_events_published")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if "_created" not in line)


# --- admin operations -------------------------------------------------------------------


async def test_every_admin_operation_refuses_publisher_tokens_and_serves_admin_ones(
    tmp_path: Path, sink: Sink
):
    """Iterates /openapi.json: a new admin route is covered without touching this test
    (unless it needs an id of a new collection or a body, below)."""
    server = Server(tmp_path / "s.db")
    await server.start()
    try:
        sink.status = 400  # refused for good: a dead letter at once
        status, subscriber, _ = await send(
            server, "POST", "/subscribers", ADMIN, {"topic": "t", "target_url": sink.url()}
        )
        assert status == 201, subscriber
        status, event, _ = await send(
            server, "POST", "/publish", mint(SECRET, "svc"), {"topic": "t", "payload": {}}
        )
        assert status == 202, event
        await sink.wait_for(1)

        async def settled() -> bool:
            state = await snapshot(server)
            events = state["/events"]["events"]
            return state["totals"]["dead"] == 1 and events[0]["status"] == "dead"

        await until(settled)
        _, dead, _ = await send(server, "GET", "/dead", ADMIN)
        ids = {
            "subscribers": subscriber["id"],
            "dead": str(dead["dead_letters"][0]["id"]),
            "events": event["event_id"],
        }
        bodies = {
            ("POST", "/subscribers"): {"topic": "t2", "target_url": sink.url("/new")},
            ("POST", "/subscribers/import"): [{"topic": "t3", "target_url": sink.url("/in")}],
            ("PATCH", "/subscribers/{id}"): {"description": "patched"},
            ("POST", "/subscribers/{id}/test"): {"deliver": True},
            ("POST", "/dead/replay"): {"topic": "t"},
            ("POST", "/filters/check"): {"expression": "True"},
        }
        operations = await admin_operations(server)
        before = await snapshot(server)
        for method, template in operations:
            for scheme, forged in FORGERIES.items():
                path = concrete(template, ids)
                body = bodies.get((method, template))
                status, answer, _ = await send(server, method, path, forged, body, scheme)
                assert status == 403, (method, path, answer)
                assert answer["error"]["code"] == "forbidden", answer
                assert "SWITCH_ADMIN_JWT_SECRET" in answer["error"]["message"]
        assert await snapshot(server) == before
        await asyncio.sleep(0.2)
        assert len(sink.requests) == 1  # no test delivery, no replay

        deletes_last = sorted(operations, key=lambda op: op[0] == "DELETE")
        for method, template in deletes_last:
            path = concrete(template, ids)
            body = bodies.get((method, template))
            status, answer, _ = await send(server, method, path, ADMIN, body)
            assert 200 <= status < 300, (method, path, status, answer)
        await sink.wait_for(3)  # the test delivery and the replay
    finally:
        await server.stop()


async def test_without_admin_secret_management_is_403_and_publishing_works(
    tmp_path: Path, sink: Sink
):
    db = tmp_path / "s.db"
    added = await asyncio.to_thread(
        run_cli, "subscribers", "add", "--topic", "t", "--url", sink.url("/seed"),
        env={"SWITCH_DB_NAME": str(db)},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    server = Server(db, SWITCH_ADMIN_JWT_SECRET="")  # empty: unset
    await server.start()
    try:
        status, auth, _ = await send(server, "GET", "/auth")
        assert status == 200 and auth["admin_configured"] is False
        assert "SWITCH_ADMIN_JWT_SECRET" in auth["message"]
        for method, template in await admin_operations(server):
            path = template.replace("{id}", "1")
            for token in (ADMIN, FORGERIES["Bearer"], None):
                status, answer, _ = await send(server, method, path, token, {})
                assert status == 403, (method, path, answer)
                assert answer["error"]["code"] == "admin_not_configured"
                assert "SWITCH_ADMIN_JWT_SECRET" in answer["error"]["message"]

        options = {"body": {"n": 1}, "headers": {"X-Seed": "yes"}}
        accepted = await asyncio.to_thread(
            seed_publish, "t", "seed-svc", options, base_url=server.url, secret=SECRET
        )  # the seed SDK's request: bearer, Author only, base64 Payload, no Content-Type
        assert accepted is True
        [delivery] = await sink.wait_for(1)
        assert (delivery.path, delivery.json()) == ("/seed", {"n": 1})
        assert delivery.headers["X-Seed"] == "yes"
        assert delivery.headers["X-Switch-Author"] == "seed-svc"
    finally:
        await server.stop()


# --- rotation ---------------------------------------------------------------------------

NEW = "the-new-publishers-secret-of-at-least-32-bytes"
NEW_ADMIN = "the-new-admins-secret-of-at-least-thirty-two-bytes"
ROTATING = {
    "SWITCH_JWT_SECRET": NEW,
    "SWITCH_JWT_SECRET_PREVIOUS": SECRET,
    "SWITCH_ADMIN_JWT_SECRET": NEW_ADMIN,
    "SWITCH_ADMIN_JWT_SECRET_PREVIOUS": ADMIN_SECRET,
}


async def cli_token(*args: str) -> str:
    result = await asyncio.to_thread(run_cli, "token", "--author", "cli", *args, env=ROTATING)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_rotation_accepts_previous_secrets_and_mints_with_current_ones(
    tmp_path: Path, sink: Sink
):
    cli_publisher, cli_admin = await cli_token(), await cli_token("--admin")
    for token, current, previous in ((cli_publisher, NEW, SECRET), (cli_admin, NEW_ADMIN, ADMIN)):
        jwt.decode(token, current, algorithms=["HS256"])  # signed with the current secret
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, previous, algorithms=["HS256"])

    server = Server(tmp_path / "s.db", **ROTATING)
    await server.start()
    try:
        status, _, _ = await send(
            server, "POST", "/subscribers", cli_admin, {"topic": "t", "target_url": sink.url()}
        )
        assert status == 201
        publishers = {"old": mint(SECRET, "old"), "cli": cli_publisher}
        for token in publishers.values():
            status, body, _ = await send(server, "POST", "/publish", token, doc())
            assert status == 202, body
        authors = {r.headers["X-Switch-Author"] for r in await sink.wait_for(2)}
        assert authors == {"old", "cli"}
        for token in (ADMIN, cli_admin):
            status, body, _ = await send(server, "GET", "/subscribers", token)
            assert status == 200 and len(body["subscribers"]) == 1
        for method, path, token in (
            ("POST", "/publish", mint(UNKNOWN, "svc")),
            ("GET", "/subscribers", mint(UNKNOWN, "ops", admin=True)),
        ):
            status, body, headers = await send(server, method, path, token, doc())
            assert (status, body["error"]["code"]) == (401, "unauthorized")
            assert headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = await send(server, "GET", "/dead", mint(SECRET, "ops", admin=True))
        assert status == 403  # a previous publisher secret is no more admin than a current one
    finally:
        await server.stop()

    finished = {k: v for k, v in ROTATING.items() if not k.endswith("_PREVIOUS")}
    server = Server(tmp_path / "s.db", **finished)  # the rotation's last step
    await server.start()
    try:
        for method, path, token, expected in (
            ("POST", "/publish", mint(SECRET, "old"), 401),
            ("GET", "/subscribers", ADMIN, 401),
            ("POST", "/publish", cli_publisher, 202),
            ("GET", "/subscribers", cli_admin, 200),
        ):
            status, body, _ = await send(server, method, path, token, doc())
            assert status == expected, (path, body)
    finally:
        await server.stop()


def doc(topic: str = "t", **payload: Any) -> dict[str, Any]:
    return {"topic": topic, "payload": payload or {"body": {"n": 1}}}


# --- topics -----------------------------------------------------------------------------


async def test_topic_scoped_token_publishes_only_where_it_may(tmp_path: Path, sink: Sink):
    server = Server(tmp_path / "s.db")
    await server.start()
    try:
        topics = ("orders.created", "orders.eu.created", "orders", "ordersX", "billing", "other")
        for topic in topics:
            body = {"topic": topic, "target_url": sink.url("/" + topic)}
            status, _, _ = await send(server, "POST", "/subscribers", ADMIN, body)
            assert status == 201
        scoped = (
            await asyncio.to_thread(
                run_cli, "token", "--author", "scoped", "--topic", "orders.*", "--topic",
                "billing", env={"SWITCH_JWT_SECRET": SECRET},
            )
        ).stdout.strip()  # fmt: skip
        assert jwt.decode(scoped, SECRET, algorithms=["HS256"])["topics"] == [
            "orders.*",
            "billing",
        ]

        for topic in ("orders", "ordersX", "orders.", "other", "billing.x"):
            status, body, _ = await send(
                server, "POST", "/publish", scoped, doc(topic), **{"Idempotency-Key": "k-1"}
            )
            assert (status, body["error"]["code"]) == (403, "topic_not_allowed"), body
            assert repr(topic) in body["error"]["message"]
        allowed = ("orders.created", "orders.eu.created", "billing")
        for topic in allowed:
            key = {"Idempotency-Key": "k-1"} if topic == "billing" else {}
            status, body, headers = await send(
                server, "POST", "/publish", scoped, doc(topic), **key
            )
            assert status == 202 and body["matched"] == 1, body
            assert "Idempotent-Replayed" not in headers  # the refusals kept no key

        received = await sink.wait_for(3)
        await asyncio.sleep(0.3)
        assert sorted(r.path for r in sink.requests) == sorted("/" + t for t in allowed)
        assert {r.headers["X-Switch-Author"] for r in received} == {"scoped"}
        _, events, _ = await send(server, "GET", "/events", ADMIN)
        assert sorted(e["topic"] for e in events["events"]) == sorted(allowed)
        assert await published_total(server) == len(allowed)

        status, body, _ = await send(server, "GET", "/refresh", scoped)  # not about topics
        assert (status, body) == (200, {"subscribers": len(topics)})
        malformed = jwt.encode({"author": "x", "topics": "orders.created"}, SECRET, "HS256")
        status, body, _ = await send(server, "POST", "/publish", malformed, doc("orders.created"))
        assert status == 401 and "topics" in body["error"]["message"]
    finally:
        await server.stop()


# --- start-up ---------------------------------------------------------------------------


def serve(**env: str) -> subprocess.CompletedProcess[str]:
    """`switchd serve` that must not start (a bad configuration)."""
    return subprocess.run(
        [sys.executable, "-m", "switchd", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean_environ(), **env},
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SWITCH_ADMIN_JWT_SECRET": SECRET}, "SWITCH_JWT_SECRET"),
        ({"SWITCH_ADMIN_JWT_SECRET_PREVIOUS": SECRET}, "SWITCH_ADMIN_JWT_SECRET_PREVIOUS"),
        ({"SWITCH_JWT_SECRET_PREVIOUS": ADMIN_SECRET}, "SWITCH_JWT_SECRET_PREVIOUS"),
        ({"SWITCH_ADMIN_JWT_SECRET": "  "}, "SWITCH_ADMIN_JWT_SECRET="),
    ],
)
def test_equal_or_bad_secrets_stop_start_up_with_one_line(env: dict[str, str], named: str):
    environ = {"SWITCH_JWT_SECRET": SECRET, "SWITCH_ADMIN_JWT_SECRET": ADMIN_SECRET, **env}
    result = serve(**environ)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert named in line and "SWITCH_ADMIN_JWT_SECRET" in line, line
    assert SECRET not in line and ADMIN_SECRET not in line  # secrets are never echoed


async def test_short_admin_secret_is_a_warning(tmp_path: Path):
    server = Server(tmp_path / "s.db", SWITCH_ADMIN_JWT_SECRET="short-admin")
    await server.start()
    assert await server.stop() == 0
    assert server.process is not None and server.process.stderr is not None
    logs = [orjson.loads(line) for line in (await server.process.stderr.read()).splitlines()]
    weak = [entry["detail"] for entry in logs if entry.get("event") == "weak_jwt_secret"]
    assert weak == ["SWITCH_ADMIN_JWT_SECRET is under 32 bytes"]
