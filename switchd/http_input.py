"""Reading request input within its limits: bodies, admin JSON bodies, numeric ids.

The limits live here, next to the code that enforces them; the HTTP handlers
(`http_api.py`) and the OpenAPI document (`openapi.py`) both import them from here.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from switchd.errors import ApiError, InvalidInput
from switchd.payload import load_json_object

MAX_ADMIN_BODY = 64 * 1024
MAX_IMPORT_BODY = 4 * 1024 * 1024  # POST /subscribers/import: 10,000 entries of ~400 bytes
READ_CHUNK = 64 * 1024
MAX_ID_DIGITS = 18  # numeric ids and cursors: every such number fits SQLite's 64-bit integers


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 when it exceeds `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except web.RequestPayloadError as exc:  # e.g. a body that is not what Content-Encoding says
        raise InvalidInput(f"cannot read the body: {exc.args[0] if exc.args else exc}") from exc
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body exceeds {limit} bytes")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """An admin request's JSON object body (at most MAX_ADMIN_BODY bytes)."""
    return load_json_object(await read_body(request, MAX_ADMIN_BODY))


def parse_id(raw: str) -> int | None:
    """A non-negative integer of at most MAX_ID_DIGITS ASCII digits, or None."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_ID_DIGITS:
        return None
    return int(raw)
