"""Plain data shared by the queues, consumers, delivery and the delivery log. Imports
nothing of switchd, so every module may import it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

IDS_PER_READ = 256  # event ids made from one read of the OS's random source
# The bits a version 4 UUID fixes: its version (4) and its variant (RFC 4122).
UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


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
    # The latest time a delivery may start and still end within the job's lease (local) or
    # reservation (Faktory): endpoint isolation holds a set-aside job no longer.
    start_by: float = math.inf
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific (e.g. Faktory)


@dataclass(frozen=True)
class KeyRecord:
    """An `Idempotency-Key`'s row for the publish it guards, in two states (idempotency.py):
    `done` is committed in the transaction that stores the event's jobs; `pending` is
    committed before jobs go to a queue no transaction of ours spans (Faktory)."""

    pending: tuple[str, Sequence[Any]]  # an SQL statement and its parameters
    done: tuple[str, Sequence[Any]]


AttemptKind = Literal["delivered", "transient", "permanent"]  # of one HTTP request
Kind = AttemptKind | Literal["skipped"]  # of a whole delivery
ATTEMPT_KINDS: tuple[str, ...] = get_args(AttemptKind)


@dataclass(frozen=True)
class Attempt:
    """One HTTP request of a delivery, as the delivery log records it."""

    number: int  # of the job's requests, earlier rounds included
    started_at: float
    duration: float  # seconds
    status: int | None
    kind: AttemptKind
    error: str | None


@dataclass(frozen=True)
class Outcome:
    """What happened to one delivery (all its quick retries included)."""

    kind: Kind
    status: int | None = None
    error: str | None = None
    requests: int = 0
    retry_after: float | None = None
    finished_at: float = 0.0
    attempts: tuple[Attempt, ...] = ()  # the HTTP requests made, in order

    @property
    def gone(self) -> bool:
        """410: the endpoint asks never to be called again."""
        return self.status == 410

    def finished(self, attempts: tuple[Attempt, ...]) -> Outcome:
        """This outcome as the whole delivery's: its requests are `attempts`, done now.
        (Half the cost of `dataclasses.replace` on this hot path.)"""
        return Outcome(
            self.kind,
            self.status,
            self.error,
            len(attempts),
            self.retry_after,
            time.time(),
            attempts,
        )


class _RandomIds:
    """Random (version 4) UUIDs as text, from random bytes read IDS_PER_READ ids at a
    time: `os.urandom` gives the GIL up, and while SQLite's thread waits for it that can
    cost the event loop a switch interval (0.5 ms), not a microsecond's system call."""

    def __init__(self) -> None:
        self._pool = b""
        self._used = 0

    def __call__(self) -> str:
        if self._used >= len(self._pool):
            self._pool, self._used = os.urandom(16 * IDS_PER_READ), 0
        raw = self._pool[self._used : self._used + 16]
        self._used += 16
        # What str(uuid.UUID(bytes=raw, version=4)) gives, in a quarter of its time.
        text = "%032x" % (int.from_bytes(raw) & UUID4_CLEAR | UUID4_SET)
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


new_event_id = _RandomIds()
