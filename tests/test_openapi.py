"""The OpenAPI document: valid, in step with the router, and true of the live app.

The fuzz run generates requests for every documented operation from the document itself
(schemathesis strategies driven by Hypothesis, derandomized so CI sees the same requests
every time) and sends them to a real switchd on 127.0.0.1. The app runs with no
consumers, so whatever subscribers the fuzzer creates, nothing is delivered but the test
deliveries `POST /subscribers/{id}/test` sends to the seeded subscribers (the sink).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from switchd import __version__
from switchd.auth import mint
from switchd.config import Settings
from switchd.dead_letters import bury
from switchd.http_api import create_app
from switchd.models import Job, Outcome
from switchd.openapi import document
from switchd.service import Switchd
from switchd.web_console import PREFIX as CONSOLE
from tests.conftest import ADMIN_SECRET, SECRET, Running, Sink, StartSwitchd

DOC = document(__version__)
SCHEMA = schemathesis.openapi.from_dict(DOC)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
VERBS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
EXAMPLES_PER_MODE = 50  # per operation and generation mode (positive, negative)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
TOKENS = {
    "admin": "Bearer " + mint(ADMIN_SECRET, "fuzz-ops", admin=True),
    "publisher": "Bearer " + mint(SECRET, "fuzz-svc"),
    "seed-style": "bearer " + mint(SECRET, "fuzz-seed"),
    "forged-admin": "Bearer " + mint(SECRET, "fuzz-forger", admin=True),  # publishers' secret
    "scoped": "Bearer " + mint(SECRET, "fuzz-scoped", topics=["orders", "x.*"]),
    "expired": "Bearer " + mint(ADMIN_SECRET, "fuzz-old", admin=True, ttl=-3600),
    "none": None,
    "generated": ...,  # keep the garbage Authorization schemathesis generated
}
CREDENTIALS = ["admin", "admin", "admin", "publisher", "seed-style", *TOKENS]  # weighted


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in VERBS
    }


def test_document_is_valid_openapi():
    validate(DOC)
    assert DOC["openapi"].startswith("3.") and DOC["info"]["version"] == __version__


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path):
    app = create_app(Switchd(Settings(jwt_secret=SECRET, db_name=str(tmp_path / "s.db"))))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if not route.resource.canonical.startswith(CONSOLE)  # static files, not the API
    }
    gets = {path for method, path in routes if method == "GET"}
    heads = {path for method, path in routes if method == "HEAD"}
    assert heads <= gets, "HEAD is documented only as the twin aiohttp adds to each GET"
    assert {route for route in routes if route[0] != "HEAD"} == documented_routes()


def test_every_secured_operation_names_its_token_kinds():
    schemes = set(DOC["components"]["securitySchemes"])
    assert schemes == {"publisherToken", "adminToken"}
    for label, op in OPERATIONS.items():
        spec = op.definition.raw
        named = {name for requirement in spec["security"] for name in requirement}
        assert named <= schemes, label
        if named:
            assert "403" in spec["responses"] or label == "GET /refresh", label


async def test_auth_is_as_documented(start_switchd: StartSwitchd):
    """No token: 401 with WWW-Authenticate exactly where the operation has security; a
    publisher token, also one claiming the admin scope: 403 exactly where the document
    says admin only (the admin token scheme alone)."""
    app = await start_switchd(consumer_concurrency=0)
    forged = {"Authorization": TOKENS["forged-admin"]}
    for label, op in OPERATIONS.items():
        spec = op.definition.raw
        path = op.path.replace("{id}", "1")
        secured = bool(spec["security"])
        admin_only = spec["security"] == [{"adminToken": []}]
        assert admin_only == ("**Admin only**" in spec["description"]), label
        async with app.client.request(op.method, app.url + path, data=b"{}") as answer:
            assert (answer.status == 401) == secured, label
            assert (answer.headers.get("WWW-Authenticate") == "Bearer") == secured, label
        for headers in (app.publisher, forged):
            async with app.client.request(op.method, app.url + path, headers=headers) as answer:
                assert (answer.status == 403) == admin_only, label


async def test_served_document_is_the_document(start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    status, body = await app.call("GET", "/openapi.json")  # no token needed
    assert status == 200 and body == DOC


def _error_body(body: Any) -> bool:
    """`{"error": {"code": str, "message": str}}` and nothing else."""
    return (
        isinstance(body, dict)
        and body.keys() == {"error"}
        and isinstance(body["error"], dict)
        and body["error"].keys() == {"code", "message"}
        and all(isinstance(v, str) for v in body["error"].values())
    )


def _matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), path) is not None


async def test_unsupported_methods_get_405_with_allow_and_error_body(
    start_switchd: StartSwitchd,
):
    app = await start_switchd(consumer_concurrency=0)
    for template in DOC["paths"]:
        path = template.replace("{id}", "1")
        allowed = {m for m, t in documented_routes() if _matches(t, path)}
        allowed |= {"HEAD"} if "GET" in allowed else set()
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed:
            async with app.client.request(method, app.url + path, headers=app.admin) as answer:
                assert answer.status == 405, (method, path)
                assert set(answer.headers["Allow"].split(",")) == allowed, (method, path)
                assert _error_body(await answer.json()), (method, path)


# --- the fuzz run ---------------------------------------------------------------------


@dataclass
class World:
    """What the live app holds before the fuzzer starts."""

    url: str
    live: str  # an enabled subscriber (its target: the sink)
    disabled: str  # a disabled subscriber
    dead: dict[str, tuple[int, str]]  # subscriber id -> (dead letter id, event id)
    events: list[str]  # in the delivery log

    def known(self, path: str) -> dict[str, list[Any]]:
        """Existing values the fuzzer swaps in for generated ids, topics… on `path`."""
        ids = {"/dead/": [dead_id for dead_id, _ in self.dead.values()], "/events/": self.events}
        return {
            "id": next(
                (known for prefix, known in ids.items() if path.startswith(prefix)),
                [self.live, self.disabled],
            ),
            "subscriber_id": [self.live, self.disabled, GONE],
            "topic": ["orders"],
            "author": ["svc"],
            "deliver": [True],  # POST /subscribers/{id}/test: a real test delivery
            "event_id": [self.dead[self.live][1]],
        }


GONE = "deleted-subscriber"


async def _seed(app: Running, sink: Sink) -> World:
    """Two subscribers (one disabled) and a dead letter for each plus one whose
    subscriber is gone: every replay outcome is reachable. Two logged events, one of them
    matched (its job waits: there are no consumers)."""
    live = await app.add_subscriber(topic="orders", target_url=sink.url("/live"), secret=True)
    off = await app.add_subscriber(topic="orders", target_url=sink.url("/off"), enabled=False)
    now = time.time()
    owners = (live["id"], off["id"], GONE)
    events = [str(uuid.uuid4()) for _ in owners]
    graves = [
        bury(
            Job(
                id="1",
                event_id=event_id,
                subscriber_id=owner,
                topic="orders",
                author="fuzz",
                target_url=sink.url("/dead"),
                filter_expression="True",
                payload={"body": {"n": 1}, "headers": {"X-N": "1"}},
            ),
            Outcome("permanent", 404, "HTTP 404", 1, finished_at=now),
        )
        for owner, event_id in zip(owners, events, strict=True)
    ]
    await app.service.db.write(graves)
    rows = await app.service.db.fetchall("SELECT id, subscriber_id, event_id FROM dead_letters")
    dead = {row["subscriber_id"]: (row["id"], row["event_id"]) for row in rows}
    logged = [(await app.publish(topic, {"body": {}}))[1]["event_id"] for topic in ("orders", "x")]
    await app.service.event_log.flush()
    return World(url=app.url, live=live["id"], disabled=off["id"], dead=dead, events=logged)


def _with_known_values(case: Any, picks: dict[str, Any]) -> None:
    """Swap generated ids, topics… for existing ones (positive mode only: a negative
    case must stay invalid)."""
    for name, value in picks.items():
        if value is None:
            continue
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = value
        if name in (case.query or {}):
            case.query[name] = value
        if isinstance(case.body, dict) and name in case.body:
            case.body[name] = value


def _authorize(case: Any, who: str) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    token = TOKENS[who]
    if token is ...:
        token = (case.headers or {}).get("Authorization")
    if token is not None:
        headers["Authorization"] = token
    case.headers = headers


def _fuzz(label: str, world: World, mode: GenerationMode) -> dict[int, int]:
    """Send generated requests for one operation; return how many got each status."""
    operation = OPERATIONS[label]
    statuses: dict[int, int] = {}
    known = st.fixed_dictionaries(  # known values first: Hypothesis favours early choices
        {
            name: st.sampled_from([*values, None])
            for name, values in world.known(operation.path).items()
        }
    )
    checks = [*CHECKS, negative_data_rejection] if mode.is_negative else CHECKS

    @given(case=operation.as_strategy(mode), who=st.sampled_from(CREDENTIALS), picks=known)
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def run(case: Any, who: str, picks: dict[str, Any]) -> None:
        if not mode.is_negative:
            _with_known_values(case, picks)
        _authorize(case, who)
        answer = case.call(base_url=world.url, session=session, timeout=10)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        case.validate_response(answer, checks=checks)
        if answer.status_code >= 400 and label != "GET /readyz":
            assert _error_body(answer.json()), answer.text

    with requests.Session() as session:
        session.trust_env = False  # straight to 127.0.0.1, whatever proxy the env names
        run()
    return statuses


def _has_inputs(label: str) -> bool:
    operation = OPERATIONS[label]
    return bool(operation.path_parameters or operation.query or operation.body) or bool(
        operation.definition.raw.get("security")
    )


FUZZ_RUNS = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_inputs(label)
]


@pytest.mark.parametrize(("label", "mode"), FUZZ_RUNS)
async def test_fuzz_live_app_from_the_document(
    label: str, mode: GenerationMode, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)  # no consumers: nothing leaves the box
    world = await _seed(app, sink)
    statuses = await asyncio.to_thread(_fuzz, label, world, mode)
    assert all(status < 500 for status in statuses), statuses
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in statuses), f"never got past errors: {statuses}"
    status, health = await app.call("GET", "/healthz")
    assert status == 200 and health == {"status": "ok"}
    tested = label == "POST /subscribers/{id}/test"
    assert {r.path for r in sink.requests} <= ({"/live", "/off"} if tested else set())


# --- integer parameters, and the server bug the fuzz run found ----------------------------

NON_ASCII_DIGITS = [
    # (method, path, expected status): the document says these are integers. These were
    ("GET", "/dead/\u00b2", 404),  # '²' SUPERSCRIPT TWO
    ("DELETE", "/dead/\u00b2", 404),
    ("POST", "/dead/\u00b2/replay", 404),
    ("GET", "/dead/\u0661", 404),  # '١' ARABIC-INDIC DIGIT ONE: int() takes it, must not alias 1
    ("GET", "/dead?limit=\u00b2", 400),
    ("GET", "/dead?cursor=\u2460", 400),  # '①' CIRCLED DIGIT ONE
]


@pytest.mark.parametrize(("method", "path", "expected"), NON_ASCII_DIGITS)
async def test_non_ascii_digits_in_integer_parameters_are_refused(
    method: str, path: str, expected: int, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    await _seed(app, sink)  # dead letter 1 exists
    status, body = await app.call(method, path, headers=app.admin)
    assert (status, _error_body(body)) == (expected, True), body


@pytest.mark.parametrize("owner", ["disabled", "deleted"])
async def test_bulk_replay_of_one_unreplayable_dead_letter(
    owner: str, start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd(consumer_concurrency=0)
    world = await _seed(app, sink)
    subscriber_id = world.disabled if owner == "disabled" else GONE
    status, body = await app.call(
        "POST", "/dead/replay", json={"subscriber_id": subscriber_id}, headers=app.admin
    )
    assert (status, body) == (202, {"replayed": 0})


def _parameter(path: str, name: str) -> dict[str, Any]:
    [found] = [p for p in DOC["paths"][path]["get"]["parameters"] if p["name"] == name]
    return found["schema"]


async def test_documented_limits_are_the_enforced_ones(start_switchd: StartSwitchd):
    """The document takes its limits from the modules that enforce them: at each edge the
    document and the live app agree."""
    app = await start_switchd(consumer_concurrency=0)
    largest = _parameter("/dead", "cursor")["maximum"]
    assert (await app.call("GET", f"/dead?cursor={largest}", headers=app.admin))[0] == 200
    assert (await app.call("GET", f"/dead?cursor={largest + 1}", headers=app.admin))[0] == 400
    topic = re.compile(
        DOC["components"]["schemas"]["PublishRequest"]["properties"]["topic"]["pattern"]
    )
    for name, documented in (("a\x85b", False), ("a\x1fb", False), ("a\xa0b", True)):
        assert bool(topic.fullmatch(name)) is documented
        status, _ = await app.publish(name, {})
        assert (status == 202) is documented, name
