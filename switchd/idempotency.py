"""Idempotent publishing: the same author and `Idempotency-Key` within 24 h get the
first response again, and nothing new is enqueued.

A key's row is committed in the same transaction as the event's jobs (and its row in the
delivery log), so a crash or a storage fault leaves both or neither: a retry either finds
the key, or finds nothing and publishes afresh. An event that matched no subscriber has
no job: its key is committed with its delivery-log row.

Faktory is another system, so no transaction spans its jobs and the key. There the key
is first committed as *pending* (with the event id and the matched subscribers) before
the jobs are pushed, then marked *done*. A retry that finds a pending key answers with
the first event id and pushes that event's jobs again: the first push may or may not
have reached Faktory, and Faktory cannot say (it does not look jobs up by jid, and a jid
must never be pushed twice), so such an event may be delivered twice, under one event id
(`X-Switch-Event-Id`, `webhook-id`), never as two events. Jobs spilled to the local
queue commit the key as done with them, atomically.

Requests with the same key arriving while the first is still running wait for it (in
this process).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from switchd.db import Database
from switchd.errors import ApiError, InvalidInput
from switchd.models import KeyRecord

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255
KEY_CHARS = r"\x20-\x7e"  # printable ASCII
VALID_KEY = re.compile(f"[{KEY_CHARS}]{{1,{MAX_KEY_LENGTH}}}")  # use with fullmatch
PENDING, DONE = "pending", "done"
STORE_KEY = (
    "INSERT OR REPLACE INTO idempotency_keys "
    "(author, key, fingerprint, response, created_at, state) VALUES (?, ?, ?, ?, ?, ?)"
)
Response = dict[str, Any]


def validate_key(key: str) -> str:
    """A key is 1–255 printable ASCII characters."""
    if not VALID_KEY.fullmatch(key):
        raise InvalidInput(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable ASCII characters",
            "invalid_idempotency_key",
        )
    return key


def fingerprint(topic: str, payload: dict[str, Any]) -> str:
    """What a repeated request must match to reuse a key."""
    canonical = orjson.dumps([topic, payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A publish request's key: its author, the key, and the request it stands for."""

    author: str
    key: str
    fingerprint: str

    def record(self, response: Response, created_at: float) -> KeyRecord:
        """The key's row with this response, pending and done."""
        params = (self.author, self.key, self.fingerprint, orjson.dumps(response), created_at)
        return KeyRecord(pending=(STORE_KEY, (*params, PENDING)), done=(STORE_KEY, (*params, DONE)))


@dataclass(frozen=True)
class Unfinished:
    """A pending key: its publish was interrupted after the event was named and before it
    was known to be stored. `response` is the answer the publish would have given."""

    response: Response
    received_at: float


@dataclass(frozen=True)
class _Stored:
    fingerprint: str
    response: Response
    created_at: float
    state: str


class IdempotencyKeys:
    """Stored first responses per (author, key), plus the requests still running."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._running: dict[tuple[str, str], asyncio.Future[tuple[str, Response]]] = {}

    async def run(
        self, claim: Claim, publish: Callable[[Unfinished | None], Awaitable[Response]]
    ) -> tuple[Response, bool]:
        """The response for this key and whether it is the first one again. `publish` is
        called unless the key is done: with None for a new key, or with the pending key's
        Unfinished publish; it must commit `claim.record(...)` with the event's jobs."""
        slot = (claim.author, claim.key)
        running = self._running.get(slot)
        if running is not None:
            return _same(claim.fingerprint, *await asyncio.shield(running)), True
        future: asyncio.Future[tuple[str, Response]] = asyncio.get_running_loop().create_future()
        self._running[slot] = future
        try:
            stored = await self._lookup(claim)
            if stored is not None:
                _same(claim.fingerprint, stored.fingerprint, stored.response)
            if stored is not None and stored.state == DONE:
                future.set_result((stored.fingerprint, stored.response))
                return stored.response, True
            unfinished = None if stored is None else Unfinished(stored.response, stored.created_at)
            response = await publish(unfinished)
            future.set_result((claim.fingerprint, response))
            return response, unfinished is not None
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._running[slot]

    async def _lookup(self, claim: Claim) -> _Stored | None:
        row = await self.db.fetchone(
            "SELECT fingerprint, response, created_at, state FROM idempotency_keys "
            "WHERE author = ? AND key = ? AND created_at > ?",
            (claim.author, claim.key, time.time() - TTL_SECONDS),
        )
        if row is None:
            return None
        response = orjson.loads(row["response"])
        return _Stored(row["fingerprint"], response, row["created_at"], row["state"])

    async def purge(self) -> int:
        """Forget keys older than 24 h; return how many."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at <= ?", (time.time() - TTL_SECONDS,)
            )
            return cursor.rowcount


def _same(print_: str, stored_print: str, response: Response) -> Response:
    if stored_print != print_:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request in the last 24 h",
        )
    return response
