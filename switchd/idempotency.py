"""Idempotent publishing: the same author and `Idempotency-Key` within 24 h get the
first response again, and nothing new is enqueued.

Keys are stored in the database once the publish succeeded; requests with the same key
arriving while the first is still running wait for it (in this process).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from switchd.db import Database
from switchd.errors import ApiError, InvalidInput

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255
KEY_CHARS = r"\x20-\x7e"  # printable ASCII
VALID_KEY = re.compile(f"[{KEY_CHARS}]{{1,{MAX_KEY_LENGTH}}}")  # use with fullmatch
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


class IdempotencyKeys:
    """Stored first responses per (author, key), plus the requests still running."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._running: dict[tuple[str, str], asyncio.Future[tuple[str, Response]]] = {}

    async def run(
        self, author: str, key: str, print_: str, work: Callable[[], Awaitable[Response]]
    ) -> tuple[Response, bool]:
        """The response for this key and whether it is a replay of an earlier one."""
        slot = (author, key)
        running = self._running.get(slot)
        if running is not None:
            return _same(print_, *await asyncio.shield(running)), True
        future: asyncio.Future[tuple[str, Response]] = asyncio.get_running_loop().create_future()
        self._running[slot] = future
        try:
            stored = await self._lookup(author, key)
            if stored is not None:
                future.set_result(stored)
                return _same(print_, *stored), True
            response = await work()
            await self._store(author, key, print_, response)
            future.set_result((print_, response))
            return response, False
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._running[slot]

    async def _lookup(self, author: str, key: str) -> tuple[str, Response] | None:
        row = await self.db.fetchone(
            "SELECT fingerprint, response FROM idempotency_keys "
            "WHERE author = ? AND key = ? AND created_at > ?",
            (author, key, time.time() - TTL_SECONDS),
        )
        return (row["fingerprint"], orjson.loads(row["response"])) if row else None

    async def _store(self, author: str, key: str, print_: str, response: Response) -> None:
        await self.db.write(
            [
                (
                    "INSERT OR REPLACE INTO idempotency_keys "
                    "(author, key, fingerprint, response, created_at) VALUES (?, ?, ?, ?, ?)",
                    (author, key, print_, orjson.dumps(response), time.time()),
                )
            ]
        )

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
