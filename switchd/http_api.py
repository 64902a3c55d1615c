"""The HTTP API: publishing, subscribers, health. Every error is a JSON body."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web

from switchd.auth import AuthError, Principal, bearer_token, verify
from switchd.errors import ApiError, InvalidInput
from switchd.payload import parse_publish
from switchd.queue.base import QueueUnavailable
from switchd.service import Switchd
from switchd.subscribers import validate_fields

log = structlog.get_logger("switchd.http")
SERVICE: web.AppKey[Switchd] = web.AppKey("switchd", Switchd)
MAX_ADMIN_BODY = 64 * 1024


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
    """The caller's principal; 401 without a valid token, 403 without the admin scope."""
    service = request.app[SERVICE]
    try:
        principal = verify(
            bearer_token(request.headers.get("Authorization")), service.settings.jwt_secret
        )
    except AuthError as exc:
        raise ApiError(401, "unauthorized", exc.reason) from exc
    if admin and not principal.admin:
        raise ApiError(403, "forbidden", "this endpoint needs a token with the 'admin' scope")
    return principal


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 when it exceeds `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise _too_large(limit)
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body exceeds {limit} bytes")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """An admin request's JSON object body."""
    raw = await read_body(request, MAX_ADMIN_BODY)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object", "invalid_json")
    return data


async def publish(request: web.Request) -> web.Response:
    """POST /publish: seed-compatible publishing."""
    service = request.app[SERVICE]
    principal = authenticate(request)
    topic, payload = parse_publish(await read_body(request, service.settings.max_payload_bytes))
    try:
        result = await service.publish(topic, principal.author, payload)
    except QueueUnavailable as exc:
        log.error("publish_unavailable", topic=topic, error=str(exc))
        raise ApiError(
            503, "queue_unavailable", "the event could not be stored; retry later"
        ) from exc
    return json_response(result, status=202)


async def refresh(request: web.Request) -> web.Response:
    """GET /refresh: reload subscribers now."""
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
    row = await service.store.create(fields)
    await service.registry.reload()
    return json_response(_subscriber(service, row["id"], show_secret=True), status=201)


async def get_subscriber(request: web.Request) -> web.Response:
    """GET /subscribers/{id}."""
    authenticate(request, admin=True)
    return json_response(_subscriber(request.app[SERVICE], request.match_info["id"]))


async def update_subscriber(request: web.Request) -> web.Response:
    """PATCH /subscribers/{id}: a new secret is shown in this response only."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    subscriber_id = request.match_info["id"]
    _subscriber(service, subscriber_id)
    fields = validate_fields(await read_json_object(request), partial=True)
    if fields and not await service.store.update(subscriber_id, fields):
        raise _not_found(subscriber_id)
    await service.registry.reload()
    return json_response(_subscriber(service, subscriber_id, show_secret="secret" in fields))


async def delete_subscriber(request: web.Request) -> web.Response:
    """DELETE /subscribers/{id}."""
    authenticate(request, admin=True)
    service = request.app[SERVICE]
    if not await service.store.delete(request.match_info["id"]):
        raise _not_found(request.match_info["id"])
    await service.registry.reload()
    return web.Response(status=204)


def _subscriber(service: Switchd, subscriber_id: str, show_secret: bool = False) -> dict[str, Any]:
    subscriber = service.registry.get(subscriber_id)
    if subscriber is None:
        raise _not_found(subscriber_id)
    return subscriber.public(show_secret=show_secret)


def _not_found(subscriber_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no subscriber {subscriber_id!r}")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the event loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: database and queue answer and the process is not draining."""
    reasons = await request.app[SERVICE].readiness()
    if reasons:
        return json_response({"status": "unavailable", "reasons": reasons}, status=503)
    return json_response({"status": "ready"})


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
    app.router.add_get("/subscribers/{id}", get_subscriber)
    app.router.add_patch("/subscribers/{id}", update_subscriber)
    app.router.add_delete("/subscribers/{id}", delete_subscriber)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
