"""Subscribers: validation, storage, and the in-memory topic index used at publish time."""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from switchd.db import Database
from switchd.errors import InvalidInput
from switchd.filter_index import TopicIndex
from switchd.filters import CompiledFilter, FilterError, compile_filter
from switchd.payload import CONTROL_CHARS, validate_topic

log = structlog.get_logger("switchd.subscribers")

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 1000
COLUMNS = (
    "id, topic, target_url, filter_expression, enabled, disabled_reason, secret, "
    "description, created_at, updated_at"
)
EDITABLE = ("topic", "target_url", "filter_expression", "enabled", "secret", "description")


@dataclass(frozen=True)
class Subscriber:
    """A subscriber as stored, with its filter compiled."""

    id: str
    topic: str
    target_url: str
    filter_expression: str
    enabled: bool
    disabled_reason: str | None
    secret: str | None
    description: str
    created_at: float
    updated_at: float
    compiled: CompiledFilter = field(compare=False, repr=False)

    def public(self, show_secret: bool = False) -> dict[str, Any]:
        """The API representation; the secret only when asked (on create or rotation)."""
        data: dict[str, Any] = {
            "id": self.id,
            "topic": self.topic,
            "target_url": self.target_url,
            "filter_expression": self.filter_expression,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "has_secret": self.secret is not None,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if show_secret:
            data["secret"] = self.secret
        return data


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def validate_url(url: object) -> str:
    """An absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"'target_url' must be a URL of 1..{MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidInput(f"'target_url' is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("'target_url' must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in url) or CONTROL_CHARS.search(url):
        raise InvalidInput("'target_url' must not contain whitespace or control characters")
    if not url.isascii():
        raise InvalidInput(
            "'target_url' must be ASCII: percent-encode the path, use punycode for the host"
        )
    return url


def validate_secret(value: object) -> str | None:
    """`true` generates a secret, null removes it, a `whsec_…` string is used as given."""
    if value is None or value is False:
        return None
    if value is True:
        return new_secret()
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise InvalidInput("'secret' must be true, null, or a 'whsec_' + base64 string")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("'secret' is not valid base64 after 'whsec_'") from exc
    if not 24 <= len(key) <= 64:
        raise InvalidInput("'secret' must hold 24..64 bytes")
    return value


def validate_fields(fields: dict[str, Any], partial: bool) -> dict[str, Any]:
    """Check subscriber fields from an API body; raise InvalidInput naming the problem."""
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    if not partial or "topic" in fields:
        clean["topic"] = validate_topic(fields.get("topic"))
    if not partial or "target_url" in fields:
        clean["target_url"] = validate_url(fields.get("target_url"))
    if "filter_expression" in fields or not partial:
        clean["filter_expression"] = _validate_filter(fields.get("filter_expression"))
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            raise InvalidInput("'enabled' must be true or false")
        clean["enabled"] = fields["enabled"]
    if "secret" in fields:
        clean["secret"] = validate_secret(fields["secret"])
    if "description" in fields:
        description = fields["description"]
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
            raise InvalidInput(
                f"'description' must be a string of at most {MAX_DESCRIPTION_LENGTH}"
            )
        clean["description"] = description
    return clean


def _validate_filter(expression: object) -> str:
    if expression is None:
        return "True"
    if not isinstance(expression, str):
        raise InvalidInput("'filter_expression' must be a string", "invalid_filter")
    try:
        compile_filter(expression)
    except FilterError as exc:
        raise InvalidInput(f"'filter_expression' is invalid: {exc}", "invalid_filter") from exc
    return expression.strip() or "True"


class SubscriberStore:
    """Subscriber rows in SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Insert a validated subscriber; return its stored row as a dict."""
        [row] = await self.create_many([fields])
        return row

    async def create_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert validated subscribers in one transaction (all or none)."""
        now = time.time()
        rows = [
            {
                "id": str(uuid.uuid4()),
                "topic": None,
                "target_url": None,
                "filter_expression": "True",
                "enabled": True,
                "disabled_reason": None,
                "secret": None,
                "description": "",
                **fields,
                "created_at": now,
                "updated_at": now,
            }
            for fields in items
        ]
        if rows:
            names = ", ".join(rows[0])
            marks = ", ".join("?" for _ in rows[0])
            async with self.db.transaction() as conn:
                await conn.executemany(
                    f"INSERT INTO subscribers ({names}) VALUES ({marks})",
                    [list(row.values()) for row in rows],
                )
        return rows

    async def update(self, subscriber_id: str, fields: dict[str, Any]) -> bool:
        """Apply validated fields; re-enabling clears the disabled reason. False if absent."""
        changes = dict(fields)
        if changes.get("enabled") is True:
            changes["disabled_reason"] = None
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                f"UPDATE subscribers SET {assignments} WHERE id = ?",
                [*changes.values(), subscriber_id],
            )
            return cursor.rowcount > 0

    async def disable(self, subscriber_id: str, reason: str) -> None:
        """Turn a subscriber off, recording why."""
        await self.db.write(
            [
                (
                    "UPDATE subscribers SET enabled = 0, disabled_reason = ?, updated_at = ? "
                    "WHERE id = ?",
                    (reason, time.time(), subscriber_id),
                )
            ]
        )

    async def delete(self, subscriber_id: str) -> bool:
        """Remove a subscriber; False if it did not exist."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute("DELETE FROM subscribers WHERE id = ?", (subscriber_id,))
            return cursor.rowcount > 0

    async def rows(self) -> list[dict[str, Any]]:
        """Every subscriber row, oldest first."""
        rows = await self.db.fetchall(
            f"SELECT {COLUMNS} FROM subscribers ORDER BY created_at, rowid"
        )
        return [dict(row) for row in rows]

    async def version(self) -> int:
        """A counter bumped by triggers on every change, from this process or another."""
        row = await self.db.fetchone("SELECT value FROM meta WHERE key = 'subscribers_version'")
        return int(row[0]) if row else 0


class Registry:
    """In-memory index of subscribers by topic and id, rebuilt when the table changes."""

    def __init__(self, store: SubscriberStore, on_filter_error: Callable[[], None] | None = None):
        self.store = store
        self.on_filter_error = on_filter_error
        self.by_id: dict[str, Subscriber] = {}
        self.by_topic: dict[str, list[Subscriber]] = {}
        self._indexes: dict[str, TopicIndex] = {}
        self._compiled: dict[str, CompiledFilter] = {}
        self._version = -1
        self._lock = asyncio.Lock()

    async def reload(self) -> int:
        """Rebuild from the database; return the number of subscribers."""
        async with self._lock:
            version = await self.store.version()
            rows = await self.store.rows()
            self._rebuild(rows)
            self._version = version
        return len(self.by_id)

    async def reload_if_changed(self) -> bool:
        """Reload when another writer changed the table; True if it did."""
        if await self.store.version() == self._version:
            return False
        await self.reload()
        return True

    def _rebuild(self, rows: list[dict[str, Any]]) -> None:
        compiled_cache, self._compiled = self._compiled, {}
        by_id: dict[str, Subscriber] = {}
        by_topic: dict[str, list[Subscriber]] = {}
        for row in rows:
            subscriber = self._subscriber(row, compiled_cache)
            by_id[subscriber.id] = subscriber
            if subscriber.enabled:
                by_topic.setdefault(subscriber.topic, []).append(subscriber)
        self.by_id, self.by_topic = by_id, by_topic
        self._indexes = {topic: TopicIndex(subs) for topic, subs in by_topic.items()}

    def _subscriber(self, row: dict[str, Any], cache: dict[str, CompiledFilter]) -> Subscriber:
        source = row["filter_expression"]
        compiled = cache.get(source) or self._compiled.get(source)
        if compiled is None:
            try:
                compiled = compile_filter(source)
            except FilterError as exc:
                log.error("filter_invalid", subscriber_id=row["id"], error=str(exc))
                compiled = CompiledFilter(source=source, tree=_NEVER)
            compiled.on_error = self.on_filter_error
        self._compiled[source] = compiled
        return Subscriber(**{**row, "enabled": bool(row["enabled"])}, compiled=compiled)

    def matching(self, topic: str, payload: dict[str, Any]) -> list[Subscriber]:
        """Enabled subscribers of `topic` whose filter accepts `payload`."""
        index = self._indexes.get(topic)
        return index.matching(payload) if index is not None else []  # type: ignore[return-value]

    def topic_label(self, topic: str) -> str:
        """`topic` if some enabled subscriber listens to it, else "other" (bounded labels)."""
        return topic if topic in self.by_topic else "other"

    def get(self, subscriber_id: str | None) -> Subscriber | None:
        """A subscriber by id, or None."""
        return self.by_id.get(subscriber_id) if subscriber_id else None


_NEVER = ast.Constant(value=False)  # a filter that failed to compile matches nothing
