"""Every 4xx path of /publish and /subscribers: a JSON error, and nothing stored."""

from __future__ import annotations

import base64
import time

import jwt
import orjson
import pytest

from switchd.auth import mint
from tests.conftest import ADMIN_SECRET, SECRET, Sink, StartSwitchd

ADMIN = "Bearer " + mint(ADMIN_SECRET, "ops", admin=True)
PUBLISHER = "Bearer " + mint(SECRET, "svc")
FORGED_ADMIN = "Bearer " + mint(SECRET, "ops", admin=True)  # the publishers' secret
TABLES = ("subscribers", "events", "jobs", "dead_letters")


def b64(data: object) -> str:
    return base64.b64encode(orjson.dumps(data)).decode()


def token(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return "Bearer " + jwt.encode(claims, secret, algorithm=algorithm)


NONE_ALG = "Bearer " + jwt.encode({"author": "svc"}, None, algorithm="none")

PUBLISH_CASES = [
    # (id, headers, body, status, code)
    ("no-token", {}, {"topic": "t", "payload": {}}, 401, "unauthorized"),
    ("basic-scheme", {"Authorization": "Basic abc"}, {"topic": "t", "payload": {}}, 401, None),
    ("garbage-token", {"Authorization": "Bearer x.y.z"}, {"topic": "t", "payload": {}}, 401, None),
    ("wrong-secret", {"Authorization": token({"author": "a"}, "other-secret-xxxxxxxxxxxxxxxxxxxxx")},
     {"topic": "t", "payload": {}}, 401, None),
    ("alg-none", {"Authorization": NONE_ALG}, {"topic": "t", "payload": {}}, 401, None),
    ("expired", {"Authorization": token({"author": "a", "exp": int(time.time()) - 600})},
     {"topic": "t", "payload": {}}, 401, None),
    ("not-yet", {"Authorization": token({"author": "a", "nbf": int(time.time()) + 600})},
     {"topic": "t", "payload": {}}, 401, None),
    ("no-author", {"Authorization": token({"sub": "a"})}, {"topic": "t", "payload": {}}, 401, None),
    ("not-json", {"Authorization": PUBLISHER}, b"{nope", 400, "invalid_json"),
    ("json-list", {"Authorization": PUBLISHER}, [1, 2], 400, "invalid_json"),
    ("no-topic", {"Authorization": PUBLISHER}, {"payload": {}}, 400, "invalid_topic"),
    ("empty-topic", {"Authorization": PUBLISHER}, {"topic": "", "payload": {}}, 400, "invalid_topic"),
    ("long-topic", {"Authorization": PUBLISHER}, {"topic": "t" * 256, "payload": {}}, 400,
     "invalid_topic"),
    ("control-topic", {"Authorization": PUBLISHER}, {"topic": "a\nb", "payload": {}}, 400,
     "invalid_topic"),
    ("number-topic", {"Authorization": PUBLISHER}, {"topic": 5, "payload": {}}, 400,
     "invalid_topic"),
    ("no-payload", {"Authorization": PUBLISHER}, {"topic": "t"}, 400, "invalid_payload"),
    ("bad-base64", {"Authorization": PUBLISHER}, {"topic": "t", "payload": "%%%"}, 400,
     "invalid_payload"),
    ("base64-not-json", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": base64.b64encode(b"hello").decode()}, 400, "invalid_payload"),
    ("base64-list", {"Authorization": PUBLISHER}, {"topic": "t", "payload": b64([1])}, 400,
     "invalid_payload"),
    ("payload-number", {"Authorization": PUBLISHER}, {"topic": "t", "payload": 3}, 400,
     "invalid_payload"),
    ("headers-list", {"Authorization": PUBLISHER}, {"topic": "t", "payload": {"headers": []}}, 400,
     "invalid_payload"),
    ("header-crlf", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"headers": {"X-A": "v\r\nX-Evil: 1"}}}, 400, "invalid_header"),
    ("header-name", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"headers": {"Bad Name": "v"}}}, 400, "invalid_header"),
    ("query-nested", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"query_params": {"a": {"b": 1}}}}, 400, "invalid_payload"),
    ("path-list", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"path_params": {"a": [1]}}}, 400, "invalid_payload"),
    ("bad-method", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"http_method": "TRACE"}}, 400, "invalid_payload"),
    ("too-large", {"Authorization": PUBLISHER},
     {"topic": "t", "payload": {"body": "x" * 5000}}, 413, "payload_too_large"),
]  # fmt: skip

SUBSCRIBER_CASES = [
    # (id, method, path, headers, body, status, code)
    ("list-no-token", "GET", "/subscribers", {}, None, 401, "unauthorized"),
    ("list-not-admin", "GET", "/subscribers", {"Authorization": PUBLISHER}, None, 403, "forbidden"),
    ("create-not-admin", "POST", "/subscribers", {"Authorization": PUBLISHER},
     {"topic": "t", "target_url": "http://127.0.0.1/x"}, 403, "forbidden"),
    ("create-forged-admin", "POST", "/subscribers", {"Authorization": FORGED_ADMIN},
     {"topic": "t", "target_url": "http://127.0.0.1/x"}, 403, "forbidden"),
    ("create-admin-secret-no-scope", "POST", "/subscribers",
     {"Authorization": "Bearer " + mint(ADMIN_SECRET, "ops")},
     {"topic": "t", "target_url": "http://127.0.0.1/x"}, 403, "forbidden"),
    ("create-not-json", "POST", "/subscribers", {"Authorization": ADMIN}, b"nope", 400,
     "invalid_json"),
    ("create-list", "POST", "/subscribers", {"Authorization": ADMIN}, [], 400, "invalid_json"),
    ("create-no-topic", "POST", "/subscribers", {"Authorization": ADMIN},
     {"target_url": "http://127.0.0.1/x"}, 400, "invalid_topic"),
    ("create-no-url", "POST", "/subscribers", {"Authorization": ADMIN}, {"topic": "t"}, 400,
     "invalid_request"),
    ("create-relative-url", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "/x"}, 400, "invalid_request"),
    ("create-ftp-url", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "ftp://h/x"}, 400, "invalid_request"),
    ("create-bad-port", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h:99999/x"}, 400, "invalid_request"),
    ("create-url-space", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/a b"}, 400, "invalid_request"),
    ("create-bad-filter", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "filter_expression": "data[="}, 400,
     "invalid_filter"),
    ("create-unsafe-filter", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "filter_expression": "data.__class__"}, 400,
     "invalid_filter"),
    ("create-filter-number", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "filter_expression": 1}, 400, "invalid_filter"),
    ("create-bad-secret", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "secret": "plain"}, 400, "invalid_request"),
    ("create-enabled-string", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "enabled": "yes"}, 400, "invalid_request"),
    ("create-unknown-field", "POST", "/subscribers", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x", "colour": "red"}, 400, "invalid_request"),
    ("get-missing", "GET", "/subscribers/nope", {"Authorization": ADMIN}, None, 404, "not_found"),
    ("patch-missing", "PATCH", "/subscribers/nope", {"Authorization": ADMIN}, {"enabled": False},
     404, "not_found"),
    ("delete-missing", "DELETE", "/subscribers/nope", {"Authorization": ADMIN}, None, 404,
     "not_found"),
    ("wrong-method", "PUT", "/subscribers", {"Authorization": ADMIN}, {}, 405,
     "method_not_allowed"),
    ("import-not-admin", "POST", "/subscribers/import", {"Authorization": PUBLISHER},
     [{"topic": "t", "target_url": "http://h/x"}], 403, "forbidden"),
    ("import-object", "POST", "/subscribers/import", {"Authorization": ADMIN},
     {"topic": "t", "target_url": "http://h/x"}, 400, "invalid_json"),
    ("import-not-json", "POST", "/subscribers/import", {"Authorization": ADMIN}, b"[{", 400,
     "invalid_json"),
    ("import-bad-entry", "POST", "/subscribers/import", {"Authorization": ADMIN},
     [{"topic": "t", "target_url": "http://h/x"}, {"topic": "t"}], 400, "invalid_request"),
    ("import-entry-not-object", "POST", "/subscribers/import", {"Authorization": ADMIN},
     [{"topic": "t", "target_url": "http://h/x"}, 7], 400, "invalid_request"),
    ("import-bad-filter", "POST", "/subscribers/import", {"Authorization": ADMIN},
     [{"topic": "t", "target_url": "http://h/x", "filter_expression": "9**9**9"}], 400,
     "invalid_filter"),
    ("import-too-many", "POST", "/subscribers/import", {"Authorization": ADMIN},
     [{"topic": "t", "target_url": "http://h/x"}] * 10_001, 400, "invalid_request"),
    ("import-too-large", "POST", "/subscribers/import", {"Authorization": ADMIN},
     [{"topic": "t", "target_url": "http://h/x", "description": "d" * 1000}] * 4200, 413,
     "payload_too_large"),
    ("unknown-path", "GET", "/nowhere", {}, None, 404, "not_found"),
]  # fmt: skip


async def _counts(app) -> dict[str, int]:
    return {table: await app.count(table) for table in TABLES}


def _request_kwargs(headers: dict, body: object) -> dict:
    if body is None:
        return {"headers": headers}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return {"headers": headers, "data": data}


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [case[1:] for case in PUBLISH_CASES],
    ids=[case[0] for case in PUBLISH_CASES],
)
async def test_publish_rejections(
    start_switchd: StartSwitchd, sink: Sink, headers, body, status, code
):
    app = await start_switchd(max_payload_bytes=4096)
    await app.add_subscriber(topic="t", target_url=sink.url())
    before = await _counts(app)
    got, answer = await app.call("POST", "/publish", **_request_kwargs(headers, body))
    assert got == status, answer
    assert set(answer) == {"error"} and answer["error"]["message"]
    if code:
        assert answer["error"]["code"] == code
    assert await _counts(app) == before
    assert sink.requests == []


async def test_unauthorized_has_www_authenticate(start_switchd: StartSwitchd):
    app = await start_switchd()
    async with app.client.post(app.url + "/publish", data=b"{}") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code"),
    [case[1:] for case in SUBSCRIBER_CASES],
    ids=[case[0] for case in SUBSCRIBER_CASES],
)
async def test_subscriber_rejections(
    start_switchd: StartSwitchd, method, path, headers, body, status, code
):
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url="http://127.0.0.1:9/x")
    before = await _counts(app)
    got, answer = await app.call(method, path, **_request_kwargs(headers, body))
    assert got == status, answer
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert await _counts(app) == before


async def test_patch_with_bad_field_changes_nothing(start_switchd: StartSwitchd):
    app = await start_switchd()
    created = await app.add_subscriber(topic="t", target_url="http://127.0.0.1:9/x")
    path = f"/subscribers/{created['id']}"
    status, answer = await app.call(
        "PATCH", path, json={"topic": "u", "target_url": "nope"}, headers=app.admin
    )
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    _, shown = await app.call("GET", path, headers=app.admin)
    assert shown["topic"] == "t" and shown["updated_at"] == created["updated_at"]


async def test_subscriber_crud_round_trip(start_switchd: StartSwitchd):
    app = await start_switchd()
    created = await app.add_subscriber(
        topic="t", target_url="http://127.0.0.1:9/x", description="first"
    )
    assert created["filter_expression"] == "True" and created["enabled"] is True
    assert created["secret"] is None
    path = f"/subscribers/{created['id']}"
    status, updated = await app.call(
        "PATCH", path, json={"enabled": False, "secret": True}, headers=app.admin
    )
    assert status == 200 and updated["enabled"] is False and updated["secret"].startswith("whsec_")
    status, listed = await app.call("GET", "/subscribers?topic=t", headers=app.admin)
    assert [s["id"] for s in listed["subscribers"]] == [created["id"]]
    assert "secret" not in listed["subscribers"][0]
    _, other = await app.call("GET", "/subscribers?topic=u", headers=app.admin)
    assert other["subscribers"] == []
    assert (await app.call("DELETE", path, headers=app.admin))[0] == 204
    assert await app.count("subscribers") == 0
