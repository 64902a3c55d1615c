"""`POST /subscribers/{id}/test`: a subscriber's filter against a sample payload and, if
asked, one real delivery of that sample.

The test delivery is one HTTP request by the normal deliverer (same request building and
signing), with no quick or durable retry and no dead letter. It is logged as an event of
its own (a fresh id, marked `test`) with its attempt, so it shows in `GET /events`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import orjson

from switchd.delivery import Deliverer
from switchd.errors import InvalidInput
from switchd.event_log import EventLog
from switchd.filters import check_filter
from switchd.models import Event, Job, new_event_id
from switchd.payload import decode_payload, validate_payload
from switchd.subscribers import Subscriber

SAMPLE_PAYLOAD: dict[str, Any] = {"body": {"test": True, "message": "switchd test delivery"}}
FIELDS = ("payload", "deliver")


def parse_request(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The sample payload (default SAMPLE_PAYLOAD) and whether to deliver it."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    deliver = body.get("deliver")
    if deliver is not None and not isinstance(deliver, bool):
        raise InvalidInput("'deliver' must be true or false")
    raw = body.get("payload")
    payload = copy.deepcopy(SAMPLE_PAYLOAD) if raw is None else decode_payload(raw)
    return validate_payload(payload), bool(deliver)


def evaluate(subscriber: Subscriber, payload: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether the subscriber's filter accepts `payload`, and the error if it raised."""
    verdict = check_filter(subscriber.filter_expression, payload)
    if not verdict.valid:
        return False, f"filter does not compile: {verdict.error}"
    return bool(verdict.matches), verdict.error


async def send_test(
    deliverer: Deliverer,
    event_log: EventLog,
    subscriber: Subscriber,
    payload: dict[str, Any],
    author: str,
) -> dict[str, Any]:
    """Deliver `payload` to `subscriber` once, log it as a test event, return the outcome."""
    event = Event(
        id=new_event_id(),
        topic=subscriber.topic,
        author=author,
        payload=payload,
        payload_json=orjson.dumps(payload),
        received_at=time.time(),
    )
    job = Job(
        id=event.id,
        event_id=event.id,
        subscriber_id=subscriber.id,
        topic=event.topic,
        author=author,
        target_url=subscriber.target_url,
        filter_expression=subscriber.filter_expression,
        payload=payload,
    )
    outcome = await deliverer.deliver_once(job, subscriber.target_url, subscriber.secret)
    event_log.record_event(event, [subscriber.id], test=True)
    event_log.record_attempts(job, outcome, next_retry_at=None)
    with contextlib.suppress(Exception):  # else the background writer retries and reports
        await event_log.flush()  # so that the test event can be looked up at once
    duration = sum(attempt.duration for attempt in outcome.attempts)
    return {
        "event_id": event.id,
        "outcome": outcome.kind,
        "status": outcome.status,
        "error": outcome.error,
        "duration_ms": round(duration * 1000, 3),
    }
