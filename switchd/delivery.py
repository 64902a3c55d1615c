"""Turning a job into an HTTP request, sending it, and classifying the result.

The deliverer does not know which queue a job came from: it returns an Outcome and the
queue decides what that means (ack, durable retry, dead letter).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import orjson
import structlog
import tenacity

from switchd import __version__
from switchd.config import Settings
from switchd.http_client import HttpClient
from switchd.metrics import Metrics
from switchd.models import Attempt, AttemptKind, Job, Outcome
from switchd.payload import (
    CONTROL_CHARS,
    HEADER_NAME,
    HEADER_VALUE_CONTROL_CHARS,
    HTTP_METHODS,
    scalar_text,
)
from switchd.registry import Registry
from switchd.subscribers import SECRET_PREFIX

log = structlog.get_logger("switchd.delivery")

TRANSIENT_STATUSES = frozenset({408, 425, 429})
DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "user-agent",  # switchd's own headers below are set by switchd alone
        "x-switch-topic",
        "x-switch-event-id",
        "x-switch-author",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
MAX_ERROR_BODY = 512
EVENT_CACHE_SIZE = 1024  # prepared events kept for their other subscribers' jobs
USER_AGENT = f"switchd/{__version__}"


@dataclass(frozen=True)
class Request:
    """An HTTP request ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True)
class EventRequest:
    """What is the same in every request for one event, whoever the subscriber."""

    method: str
    path_params: dict[str, Any]
    query_params: dict[str, Any]
    headers: dict[str, str]  # the caller's (filtered) and switchd's, but the timestamp
    body: bytes | None


def prepare(job: Job) -> EventRequest:
    """Method, params, headers and body of a job's event, encoded once per event."""
    payload = job.payload
    method = str(payload.get("http_method") or "POST").upper()
    if method not in HTTP_METHODS:
        method = "POST"
    body = None if payload.get("body") is None else orjson.dumps(payload["body"])
    headers = _caller_headers(_dict(payload.get("headers")))
    if body is not None and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    headers.update(
        {
            "User-Agent": USER_AGENT,
            "X-Switch-Topic": _header_safe(job.topic),
            "X-Switch-Event-Id": job.event_id,
            "X-Switch-Author": _header_safe(job.author),
            "webhook-id": job.event_id,
        }
    )
    path_params, query_params = (
        _dict(payload.get("path_params")),
        _dict(payload.get("query_params")),
    )
    return EventRequest(method, path_params, query_params, headers, body)


def build_request(
    job: Job, target_url: str, secret: str | None, now: int, event: EventRequest | None = None
) -> Request:
    """The request a job describes: method, URL with params, filtered headers, JSON body.

    `event` is `prepare(job)` when the caller already has it."""
    event = event or prepare(job)
    if event.path_params or event.query_params:
        url = build_url(target_url, event.path_params, event.query_params)
    else:
        url = _plain_url(target_url)
    headers = {**event.headers, "webhook-timestamp": str(now)}
    if secret:
        headers["webhook-signature"] = sign(secret, job.event_id, now, event.body or b"")
    return Request(method=event.method, url=url, headers=headers, body=event.body)


@functools.lru_cache(maxsize=4096)
def _plain_url(target_url: str) -> str:
    return build_url(target_url, {}, {})


def build_url(target_url: str, path_params: dict[str, Any], query_params: dict[str, Any]) -> str:
    """Replace `:name` path segments with quoted values and append query parameters."""
    parts = urlsplit(target_url)
    segments = [
        _path_value(path_params[s[1:]]) if s.startswith(":") and s[1:] in path_params else s
        for s in parts.path.split("/")
    ]
    pairs: list[tuple[str, str]] = []
    for key, value in query_params.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((str(key), scalar_text(v)) for v in values)
    query = "&".join(q for q in (parts.query, urlencode(pairs)) if q)
    return urlunsplit((parts.scheme, parts.netloc, "/".join(segments), query, parts.fragment))


def _path_value(value: Any) -> str:
    text = quote(scalar_text(value), safe="")
    # "." and ".." would be resolved as relative segments; encode them so they stay data.
    return text.replace(".", "%2E") if set(text) <= {"."} else text


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=1024)  # topics and authors: few, and the same for many events
def _header_safe(value: str) -> str:
    return CONTROL_CHARS.sub(" ", value)


def _caller_headers(headers: dict[str, Any]) -> dict[str, str]:
    """Headers from the payload, minus hop-by-hop ones and anything not safe to send."""
    clean: dict[str, str] = {}
    for name, value in headers.items():
        text = scalar_text(value)
        if name.lower() in DROPPED_HEADERS or not HEADER_NAME.fullmatch(str(name)):
            continue
        if HEADER_VALUE_CONTROL_CHARS.search(text):
            continue
        clean[str(name)] = text
    return clean


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks signature: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    mac = _keyed_hmac(secret).copy()
    mac.update(f"{message_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


@functools.lru_cache(maxsize=4096)
def _keyed_hmac(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 that has taken its key, copied for each signature. Unlike the
    one-shot `hmac.digest`, it keeps the GIL for bodies under 2 KiB: giving it up while
    SQLite's thread waits for it can cost the event loop a switch interval (0.5 ms)."""
    return hmac.new(base64.b64decode(secret.removeprefix(SECRET_PREFIX)), digestmod="sha256")


def classify(status: int) -> AttemptKind:
    """2xx delivered; 408/425/429/5xx transient; everything else (3xx, 4xx) permanent."""
    if 200 <= status < 300:
        return "delivered"
    if status in TRANSIENT_STATUSES or status >= 500:
        return "transient"
    return "permanent"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Deliverer:
    """Sends jobs over one shared HTTP client, with quick in-process retries."""

    def __init__(
        self,
        client: HttpClient,
        settings: Settings,
        registry: Registry,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self._events: dict[str, tuple[dict[str, Any], EventRequest]] = {}
        self.metrics = metrics
        self.settings = settings
        self.registry = registry

    async def deliver(
        self, job: Job, on_request: Callable[[Outcome], bool] | None = None
    ) -> Outcome:
        """Deliver a job, retrying transient failures quickly a few times. `on_request` is
        told each request's outcome (endpoint isolation) and answers whether a quick retry
        may still follow."""
        target_url, secret = job.target_url, None
        if job.subscriber_id is not None:
            subscriber = self.registry.get(job.subscriber_id)
            if subscriber is None:
                return Outcome("skipped", error="subscriber was deleted", finished_at=time.time())
            if not subscriber.enabled:
                return Outcome("permanent", error="subscriber is disabled", finished_at=time.time())
            target_url, secret = subscriber.target_url, subscriber.secret
        tried: list[Attempt] = []
        halted = False  # on_request said no more quick retries

        async def attempt() -> Outcome:
            nonlocal halted
            outcome = await self._attempt(job, target_url, secret, job.attempts + len(tried) + 1)
            tried.extend(outcome.attempts)
            if on_request is not None and not on_request(outcome):
                halted = True
            return outcome

        outcome = await attempt()
        if self._retry_quickly(outcome) and not halted:
            outcome = await self._quick_retries(attempt, outcome, lambda: halted)
        return outcome.finished(tuple(tried))

    async def deliver_once(self, job: Job, target_url: str, secret: str | None) -> Outcome:
        """One HTTP request and no quick retry, whatever state the subscriber is in (test
        deliveries: an operator may check an endpoint before enabling it again)."""
        outcome = await self._attempt(job, target_url, secret, job.attempts + 1)
        return outcome.finished(outcome.attempts)

    def _retry_quickly(self, outcome: Outcome) -> bool:
        """Transient, quick retries configured, and no Retry-After beyond their cap."""
        patient = (outcome.retry_after or 0) <= self.settings.quick_retry_max_wait
        return outcome.kind == "transient" and self.settings.quick_retries > 0 and patient

    async def _quick_retries(
        self,
        attempt: Callable[[], Awaitable[Outcome]],
        first: Outcome,
        halted: Callable[[], bool],
    ) -> Outcome:
        """Retry a transient failure in process (tenacity), honouring Retry-After, until
        `halted()`."""
        await asyncio.sleep(self._pause(first, 1))
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.settings.quick_retries)
            | tenacity.stop_any(
                lambda state: halted() or not self._retry_quickly(state.outcome.result())
            ),
            wait=lambda state: self._pause(state.outcome.result(), state.attempt_number + 1),
            retry=tenacity.retry_if_result(lambda outcome: outcome.kind == "transient"),
            retry_error_callback=lambda state: state.outcome.result(),
            sleep=asyncio.sleep,
        )
        return await retrying(attempt)

    def _pause(self, outcome: Outcome, retry_number: int) -> float:
        """Seconds before quick retry `retry_number`: Retry-After, else 0.2 s doubling."""
        backoff = min(0.2 * 2 ** (retry_number - 1), self.settings.quick_retry_max_wait)
        return outcome.retry_after if outcome.retry_after is not None else backoff

    async def _attempt(self, job: Job, target_url: str, secret: str | None, number: int) -> Outcome:
        started = time.time()
        status: int | None = None
        retry_after: float | None = None
        try:
            event = self._event_request(job)
            request = build_request(job, target_url, secret, int(started), event)
            status, retry_after, detail = await self._send(request)
            kind = classify(status)
            error = None if kind == "delivered" else f"HTTP {status}{detail}"
        except (TimeoutError, OSError) as exc:
            kind, error = "transient", _describe(exc)
        except ValueError as exc:  # a URL or header the client refuses: retrying won't help
            kind, error = "permanent", f"invalid request: {exc}"
        duration = time.time() - started
        self.metrics.child(self.metrics.requests, kind).inc()
        self.metrics.latency.observe(duration)
        log.info(
            "delivery_attempt",
            event_id=job.event_id,
            subscriber_id=job.subscriber_id,
            topic=job.topic,
            attempt=number,
            status=status,
            outcome=kind,
            duration_ms=round(duration * 1000, 1),
            error=error,
        )
        tried = Attempt(number, started, duration, status, kind, error)
        return Outcome(kind, status, error, 1, retry_after, attempts=(tried,))

    def _event_request(self, job: Job) -> EventRequest:
        """`prepare(job)`, shared by the jobs of one event leased together (one payload)."""
        cached = self._events.get(job.event_id)
        if cached is not None and cached[0] is job.payload:
            return cached[1]
        if len(self._events) >= EVENT_CACHE_SIZE:
            self._events.clear()
        event = prepare(job)
        self._events[job.event_id] = (job.payload, event)
        return event

    async def _send(self, request: Request) -> tuple[int, float | None, str]:
        response = await self.client.request(
            request.method,
            request.url,
            request.headers,
            request.body,
            timeout=self.settings.delivery_timeout,
            excerpt=MAX_ERROR_BODY,
        )
        retry_after = parse_retry_after(response.retry_after, time.time())
        detail = "" if response.status < 300 else _excerpt(response.body)
        return response.status, retry_after, detail


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return f": {text[:200]}" if text else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
