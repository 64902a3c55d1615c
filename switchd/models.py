"""Plain data shared by the queue, consumers and delivery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One accepted publish."""

    id: str
    topic: str
    author: str
    payload: dict[str, Any]
    payload_json: bytes
    received_at: float


@dataclass
class Job:
    """One delivery of one event to one subscriber, whichever queue it came from."""

    id: str
    event_id: str
    subscriber_id: str | None
    topic: str
    author: str
    target_url: str
    filter_expression: str
    payload: dict[str, Any]
    attempts: int = 0  # HTTP requests already made for this job
    rounds: int = 0  # durable retries already used
    first_attempt_at: float | None = None
    next_retry_at: float | None = None  # set by a settle that scheduled a retry at a known time
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific (e.g. Faktory)
