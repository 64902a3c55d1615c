"""The HTTP API: publishing, subscribers, health, the console. Every error is a JSON body."""

from __future__ import annotations

import re
from typing import Any

import orjson
import structlog
from aiohttp import web

from switchd import __version__
from switchd.auth import PUBLISHER, AuthError, Principal, bearer_token
from switchd.dead_letters import DeadFilter, ReplayRefused
from switchd.errors import ApiError, InvalidInput
from switchd.event_queries import STATUSES, EventFilter
from switchd.filters import check_filter
from switchd.http_input import (
    MAX_ADMIN_BODY,
    MAX_IMPORT_BODY,
    parse_id,
    read_body,
    read_json_object,
)
from switchd.idempotency import Claim, fingerprint, validate_key
from switchd.metrics import CONTENT_TYPE
from switchd.openapi import document
from switchd.overview import DEFAULT_MINUTES, MAX_MINUTES, overview
from switchd.pagination import DEFAULT_PAGE
from switchd.payload import load_json, load_json_object, parse_publish, validate_payload
from switchd.probe import evaluate, parse_request, send_test
from switchd.queue.base import QueueUnavailable
from switchd.service import Switchd
from switchd.subscribers import (
    MAX_IMPORT_ENTRIES,
    Subscriber,
    identity,
    validate_fields,
    validate_import,
)
from switchd.web_console import add_routes as add_console_routes

log = structlog.get_logger("switchd.http")
SERVICE: web.AppKey[Switchd] = web.AppKey("switchd", Switchd)
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")  # use with fullmatch
ADMIN_NOT_CONFIGURED = (
    "the management API is disabled: SWITCH_ADMIN_JWT_SECRET is not set on this server "
    "(set it, different from SWITCH_JWT_SECRET, and restart switchd)"
)
ADMIN_HOW = (
    "management endpoints need a token signed with SWITCH_ADMIN_JWT_SECRET whose 'scope' "
    "holds 'admin'"
)
PUBLISHER_NOT_ADMIN = (
    f"publisher tokens (signed with SWITCH_JWT_SECRET) never grant admin access: {ADMIN_HOW}"
)
NO_ADMIN_SCOPE = "this endpoint needs a token with the 'admin' scope"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error body for an ApiError."""
    return json_response(error.body(), status=error.status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every failure into `{"error": {...}}`; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(ApiError(exc.status, code, exc.reason), dict(_allow(exc)))
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(ApiError(500, "internal_error", "internal server error"))


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def authenticate(request: web.Request, admin: bool = False) -> Principal:
    """The caller's principal; 401 without a valid token. With `admin`: 403 when no admin
    secret is configured or the token is not an admin token (see switchd.auth)."""
    tokens = request.app[SERVICE].tokens
    if admin and not tokens.admin_configured:
        raise ApiError(403, "admin_not_configured", ADMIN_NOT_CONFIGURED)
    try:
        principal = tokens.verify(bearer_token(request.headers.get("Authorization")))
    except AuthError as exc:
        raise ApiError(401, "unauthorized", exc.reason) from exc
    if admin and not principal.admin:
        refusal = PUBLISHER_NOT_ADMIN if principal.kind == PUBLISHER else NO_ADMIN_SCOPE
        raise ApiError(403, "forbidden", refusal)
    return principal


async def publish(request: web.Request) -> web.Response:
    """POST /publish: seed-compatible publishing, idempotent with `Idempotency-Key`."""
    service = request.app[SERVICE]
    principal = authenticate(request)
    topic, payload = parse_publish(await read_body(request, service.settings.max_payload_bytes))
    if not principal.may_publish(topic):
        raise ApiError(
            403, "topic_not_allowed", f"this token's 'topics' claim does not allow {topic!r}"
        )
    key = request.headers.get("Idempotency-Key")
    try:
        if key is None:
            result, replayed = await service.publish(topic, principal.author, payload), False
        else:
            claim = Claim(principal.author, validate_key(key), fingerprint(topic, payload))
            result, replayed = await service.publish_once(topic, payload, claim)
    except QueueUnavailable as exc:
        log.error("publish_unavailable", topic=topic, error=str(exc))
        raise ApiError(
            503, "queue_unavailable", "the event could not be stored; retry later"
        ) from exc
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return json_response(result, status=202, headers=headers)


async def refresh(request: web.Request) -> web.Response:
    """GET /refresh: reload subscribers now (any valid token; `topics` does not matter)."""
    authenticate(request)
    count = await request.app[SERVICE].registry.reload()
    return json_response({"subscribers": count})


async def list_subscribers(request: web.Request) -> web.Response:
    """GET /subscribers[?topic=]."""
    authenticate(request, admin=True)
    registry = request.app[SERVICE].registry
    topic = request.query.get("topic")
    items = [s.public() for s in registry.by_id.values() if topic is None or s.topic == topic]
    return json_response({"subscribers": items})


async def create_subscriber(request: web.Request) -> web.Response:
    """POST /subscribers: the response shows the secret, once."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    fields = validate_fields(await read_json_object(request), partial=False)
    change = await service.store.create(fields)
    await service.registry.apply([change])
    return json_response(_subscriber(service, change.id, show_secret=True), status=201)


async def import_subscribers(request: web.Request) -> web.Response:
    """POST /subscribers/import: a JSON list of new subscribers, created all or none;
    entries identical (topic, URL, filter) to an existing subscriber are skipped."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    entries = load_json(await read_body(request, MAX_IMPORT_BODY))
    if not isinstance(entries, list):
        raise InvalidInput("body must be a JSON list of subscribers", "invalid_json")
    if len(entries) > MAX_IMPORT_ENTRIES:
        raise InvalidInput(f"at most {MAX_IMPORT_ENTRIES} subscribers per import")
    clean = await validate_import(entries)
    existing = await service.registry.identical({identity(entry) for entry in clean})
    changes = await service.store.create_many(
        [entry for entry in clean if identity(entry) not in existing]
    )
    await service.registry.apply(changes)
    created = iter(changes)
    ids = [existing.get(identity(entry)) or next(created).id for entry in clean]
    secrets = {c.id: c.row["secret"] for c in changes if c.row and c.row["secret"]}
    return json_response(
        {
            "ids": ids,
            "created": len(changes),
            "skipped": len(ids) - len(changes),
            "secrets": secrets,
        },
        status=201 if changes else 200,
    )


async def get_subscriber(request: web.Request) -> web.Response:
    """GET /subscribers/{id}, with the state of its endpoint (endpoint isolation)."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    subscriber = _existing(service, request.match_info["id"])
    endpoint = service.isolation.describe(subscriber.target_url)
    return json_response({**subscriber.public(), "endpoint": endpoint})


async def update_subscriber(request: web.Request) -> web.Response:
    """PATCH /subscribers/{id}: a new secret is shown in this response only."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    subscriber_id = request.match_info["id"]
    _subscriber(service, subscriber_id)
    fields = validate_fields(await read_json_object(request), partial=True)
    if fields:
        change = await service.store.update(subscriber_id, fields)
        if change is None:
            raise _not_found(subscriber_id)
        await service.registry.apply([change])
    return json_response(_subscriber(service, subscriber_id, show_secret="secret" in fields))


async def delete_subscriber(request: web.Request) -> web.Response:
    """DELETE /subscribers/{id}."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    change = await service.store.delete(request.match_info["id"])
    if change is None:
        raise _not_found(request.match_info["id"])
    await service.registry.apply([change])
    return web.Response(status=204)


def _subscriber(service: Switchd, subscriber_id: str, show_secret: bool = False) -> dict[str, Any]:
    return _existing(service, subscriber_id).public(show_secret=show_secret)


def _existing(service: Switchd, subscriber_id: str) -> Subscriber:
    subscriber = service.registry.get(subscriber_id)
    if subscriber is None:
        raise _not_found(subscriber_id)
    return subscriber


def _not_found(subscriber_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no subscriber {subscriber_id!r}")


def _dead_filter(source: dict[str, Any]) -> DeadFilter:
    """Dead-letter filters from query parameters or a JSON body."""
    values = {k: source.get(k) for k in ("subscriber_id", "topic", "event_id")}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"'{name}' must be a string")
    replayed = source.get("replayed")
    if isinstance(replayed, str):
        replayed = {"true": True, "false": False}.get(replayed.lower(), replayed)
    if replayed is not None and not isinstance(replayed, bool):
        raise InvalidInput("'replayed' must be true or false")
    return DeadFilter(**values, replayed=replayed)


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    number = parse_id(raw)
    if number is None:
        raise InvalidInput(f"'{name}' must be a non-negative integer")
    return number


def _dead_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    number = parse_id(raw)
    if number is None:
        raise ApiError(404, "not_found", f"no dead letter {raw!r}")
    return number


async def list_dead(request: web.Request) -> web.Response:
    """GET /dead: newest first, `limit` and `cursor` for the next page."""
    authenticate(request, admin=True)
    where = _dead_filter(dict(request.query))
    return await _page(request, request.app[SERVICE].dead_letters, where, "dead_letters")


async def get_dead(request: web.Request) -> web.Response:
    """GET /dead/{id}: one dead letter with its payload."""
    authenticate(request, admin=True)
    record = await request.app[SERVICE].dead_letters.get(_dead_id(request))
    if record is None:
        raise ApiError(404, "not_found", f"no dead letter {request.match_info['id']!r}")
    return json_response(record)


async def replay_dead(request: web.Request) -> web.Response:
    """POST /dead/{id}/replay: a fresh delivery of one dead letter."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    record = await service.dead_letters.get(_dead_id(request))
    if record is None:
        raise ApiError(404, "not_found", f"no dead letter {request.match_info['id']!r}")
    try:
        count = await service.replay([record], strict=True)
    except ReplayRefused as exc:
        raise ApiError(409, "replay_refused", str(exc)) from exc
    except QueueUnavailable as exc:
        raise ApiError(503, "queue_unavailable", "the replay could not be stored") from exc
    return json_response({"replayed": count, "event_id": record["event_id"]}, status=202)


async def replay_dead_bulk(request: web.Request) -> web.Response:
    """POST /dead/replay: replay every not-yet-replayed dead letter of a subscriber or topic."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    body = await read_json_object(request)
    where = _dead_filter(body)
    if where.subscriber_id is None and where.topic is None:
        raise InvalidInput("give 'subscriber_id' or 'topic' (or both)")
    if where.replayed is None:
        where = DeadFilter(where.subscriber_id, where.topic, where.event_id, replayed=False)
    try:
        count = await service.replay(await service.dead_letters.with_payloads(where))
    except QueueUnavailable as exc:
        raise ApiError(503, "queue_unavailable", "the replays could not be stored") from exc
    return json_response({"replayed": count}, status=202)


async def delete_dead(request: web.Request) -> web.Response:
    """DELETE /dead/{id}."""
    authenticate(request, admin=True)
    deleted = await request.app[SERVICE].dead_letters.delete(DeadFilter(ids=(_dead_id(request),)))
    if not deleted:
        raise ApiError(404, "not_found", f"no dead letter {request.match_info['id']!r}")
    return web.Response(status=204)


def _number_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not NUMBER.fullmatch(raw):
        raise InvalidInput(f"'{name}' must be a number (Unix time in seconds)")
    return float(raw)


def _event_filter(request: web.Request) -> EventFilter:
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"'status' must be one of {', '.join(STATUSES)}")
    return EventFilter(
        topic=request.query.get("topic"),
        author=request.query.get("author"),
        status=status,
        since=_number_param(request, "since"),
        until=_number_param(request, "until"),
    )


async def list_events(request: web.Request) -> web.Response:
    """GET /events: the delivery log, newest first, `limit` and `cursor` for the next page."""
    authenticate(request, admin=True)
    where = _event_filter(request)
    return await _page(request, request.app[SERVICE].event_queries, where, "events")


async def _page(request: web.Request, source: Any, where: Any, key: str) -> web.Response:
    """One page of `source` (`limit` and `cursor` from the query) as `{key, next_cursor}`."""
    limit = _int_param(request, "limit", DEFAULT_PAGE) or DEFAULT_PAGE
    items, cursor = await source.page(where, limit, _int_param(request, "cursor", None))
    return json_response({key: items, "next_cursor": cursor})


async def get_event(request: web.Request) -> web.Response:
    """GET /events/{id}: one event, every attempt and the state per matched subscriber."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    event_id = request.match_info["id"]
    record = await service.event_queries.event(event_id, service.settings.log_payloads)
    if record is None:
        raise ApiError(404, "not_found", f"no event {event_id!r} in the delivery log")
    return json_response(record)


async def subscriber_stats(request: web.Request) -> web.Response:
    """GET /subscribers/{id}/stats: attempts, success rate and latency, last error."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    subscriber = _existing(service, request.match_info["id"])
    return json_response(await service.event_queries.stats(subscriber.id))


async def probe_subscriber(request: web.Request) -> web.Response:
    """POST /subscribers/{id}/test: evaluate the filter on a sample; deliver it if asked."""
    principal = authenticate(request, admin=True)
    service = request.app[SERVICE]
    subscriber = _existing(service, request.match_info["id"])
    raw = await read_body(request, MAX_ADMIN_BODY)
    payload, deliver = parse_request(load_json_object(raw) if raw.strip() else {})
    match, error = evaluate(subscriber, payload)
    delivery = None
    if deliver and match and service.deliverer is not None:
        delivery = await send_test(
            service.deliverer, service.event_log, subscriber, payload, principal.author
        )
    return json_response({"match": match, "error": error, "delivery": delivery})


async def check_filter_expression(request: web.Request) -> web.Response:
    """POST /filters/check: compile an expression and evaluate it on a sample payload."""
    authenticate(request, admin=True)
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"expression", "data"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    expression, data = body.get("expression"), body.get("data", {})
    if not isinstance(expression, str):
        raise InvalidInput("'expression' must be a string", "invalid_filter")
    if not isinstance(data, dict):
        raise InvalidInput("'data' must be a JSON object (a payload)", "invalid_payload")
    verdict = check_filter(expression, validate_payload(data))
    return json_response(
        {"valid": verdict.valid, "matches": verdict.matches, "error": verdict.error}
    )


async def list_endpoints(request: web.Request) -> web.Response:
    """GET /endpoints: each known endpoint's limit, load, circuit and last error."""
    authenticate(request, admin=True)
    return json_response(request.app[SERVICE].isolation.snapshot())


async def get_overview(request: web.Request) -> web.Response:
    """GET /overview: per-minute counts for the console's charts, and the queue's state."""
    authenticate(request, admin=True)
    minutes = _int_param(request, "minutes", DEFAULT_MINUTES)
    if minutes is None or not 1 <= minutes <= MAX_MINUTES:
        raise InvalidInput(f"'minutes' must be 1..{MAX_MINUTES}")
    return json_response(await overview(request.app[SERVICE], minutes))


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    body = await request.app[SERVICE].render_metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the event loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: database and queue answer and the process is not draining."""
    service = request.app[SERVICE]
    reasons = await service.readiness()
    queue = service.queue_status()
    if reasons:
        return json_response(
            {"status": "unavailable", "reasons": reasons, "queue": queue}, status=503
        )
    return json_response({"status": "ready", "queue": queue})


async def auth_status(request: web.Request) -> web.Response:
    """GET /auth (no auth): whether admin tokens are accepted; the console's sign-in reads it."""
    configured = request.app[SERVICE].tokens.admin_configured
    message = ADMIN_HOW if configured else ADMIN_NOT_CONFIGURED
    return json_response({"admin_configured": configured, "message": message})


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI document of this API (no auth)."""
    return json_response(document(__version__))


def create_app(service: Switchd) -> web.Application:
    """The aiohttp application serving `service`."""
    app = web.Application(
        middlewares=[errors_as_json], client_max_size=service.settings.max_payload_bytes + 1
    )
    app[SERVICE] = service
    app.router.add_post("/publish", publish)
    app.router.add_get("/refresh", refresh)
    app.router.add_get("/subscribers", list_subscribers)
    app.router.add_post("/subscribers", create_subscriber)
    app.router.add_post("/subscribers/import", import_subscribers)
    app.router.add_get("/subscribers/{id}", get_subscriber)
    app.router.add_patch("/subscribers/{id}", update_subscriber)
    app.router.add_delete("/subscribers/{id}", delete_subscriber)
    app.router.add_get("/subscribers/{id}/stats", subscriber_stats)
    app.router.add_post("/subscribers/{id}/test", probe_subscriber)
    app.router.add_get("/dead", list_dead)
    app.router.add_post("/dead/replay", replay_dead_bulk)
    app.router.add_get("/dead/{id}", get_dead)
    app.router.add_post("/dead/{id}/replay", replay_dead)
    app.router.add_delete("/dead/{id}", delete_dead)
    app.router.add_get("/events", list_events)
    app.router.add_get("/events/{id}", get_event)
    app.router.add_post("/filters/check", check_filter_expression)
    app.router.add_get("/overview", get_overview)
    app.router.add_get("/endpoints", list_endpoints)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/auth", auth_status)
    add_console_routes(app)
    return app
