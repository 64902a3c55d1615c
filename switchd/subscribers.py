"""Subscribers: validation, and storage with a change log.

Every store write reports the `Change` it made: the row as it stands at a version of the
change log (or its removal). Triggers record every writer's changes in that log, the
CLI's and other processes' too, so a reader can ask for what changed since a version
(see registry.py, which keeps the in-memory registry up to date from these changes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from switchd.db import Database, execute_rows
from switchd.errors import InvalidInput
from switchd.filters import CompiledFilter, FilterError, compile_filter
from switchd.payload import CONTROL_CHARS, validate_topic

log = structlog.get_logger("switchd.subscribers")

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 1000
COLUMN_NAMES = (
    "id",
    "topic",
    "target_url",
    "filter_expression",
    "enabled",
    "disabled_reason",
    "secret",
    "description",
    "created_at",
    "updated_at",
)
COLUMNS = ", ".join(COLUMN_NAMES)
EDITABLE = ("topic", "target_url", "filter_expression", "enabled", "secret", "description")
MAX_IMPORT_ENTRIES = 10_000  # per POST /subscribers/import
SLICE_SECONDS = 0.001  # the longest a long task (a reload, an import) holds the event loop
Identity = tuple[str, str, str]  # topic, target_url, filter_expression


@dataclass(frozen=True, slots=True)
class Change:
    """A subscriber change as a store reports it: the row as it stands at `version`, or
    None when the subscriber is gone. Versions grow with every change by any writer."""

    version: int
    id: str
    row: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
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
    version: int = field(default=0, compare=False, repr=False)  # of the change it reflects

    @property
    def order(self) -> tuple[float, str]:
        """Where it comes in lists and matches: oldest first, then by id."""
        return (self.created_at, self.id)

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


def validate_import_entry(index: int, entry: object) -> dict[str, Any]:
    """One entry of an import list (`switchd subscribers import`, POST
    /subscribers/import), validated as a new subscriber; InvalidInput names its index."""
    try:
        if not isinstance(entry, dict):
            raise InvalidInput("not a JSON object")
        return validate_fields(entry, partial=False)
    except InvalidInput as exc:
        raise InvalidInput(f"subscribers[{index}]: {exc.message}", exc.code) from exc


async def validate_import(entries: list[Any]) -> list[dict[str, Any]]:
    """Every entry of an import validated (validate_import_entry), giving the event loop
    a turn now and then: 10,000 filters take a while to compile."""
    clean = []
    slicer = Slicer()
    for index, entry in enumerate(entries):
        clean.append(validate_import_entry(index, entry))
        await slicer.tick()
    return clean


def identity(fields: Mapping[str, Any]) -> Identity:
    """What makes two subscribers identical for an import: topic, URL and filter."""
    return (fields["topic"], fields["target_url"], fields.get("filter_expression") or "True")


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
    """Subscriber rows and their change log in SQLite. Writes share group commits with
    every other write of the process, durably; each reports the changes it made."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_created = 0.0

    async def create(self, fields: dict[str, Any]) -> Change:
        """Insert a validated subscriber."""
        [change] = await self.create_many([fields])
        return change

    async def create_many(self, items: list[dict[str, Any]]) -> list[Change]:
        """Insert validated subscribers in one transaction (all or none)."""
        times = self._creation_times(len(items))
        rows = [
            _row({**NEW_ROW, **fields, "id": str(uuid.uuid4()), "created_at": t, "updated_at": t})
            for fields, t in zip(items, times, strict=True)
        ]
        if not rows:
            return []
        marks = ", ".join("?" for _ in COLUMN_NAMES)
        insert = f"INSERT INTO subscribers ({COLUMNS}) VALUES ({marks})"

        def work(conn: sqlite3.Connection) -> list[Change]:
            execute_rows(conn, insert, [tuple(row.values()) for row in rows])
            version = _last_version(conn)
            return [Change(version, row["id"], row) for row in rows]

        return await self.db.run_in_commit(work, durable=True)

    def _creation_times(self, count: int) -> list[float]:
        """Now, and after it a microsecond apart: creation times that increase in the
        order subscribers are created in this process, batches included."""
        first = max(time.time(), self._last_created + 1e-6)
        times = [first + i * 1e-6 for i in range(count)]
        self._last_created = times[-1] if times else self._last_created
        return times

    async def update(self, subscriber_id: str, fields: dict[str, Any]) -> Change | None:
        """Apply validated fields; re-enabling clears the disabled reason. None if absent."""
        changes = dict(fields)
        if changes.get("enabled") is True:
            changes["disabled_reason"] = None
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        sql = f"UPDATE subscribers SET {assignments} WHERE id = ?"
        return await self._change(subscriber_id, sql, [*changes.values(), subscriber_id])

    async def disable(self, subscriber_id: str, reason: str) -> Change | None:
        """Turn a subscriber off, recording why; None if absent."""
        sql = "UPDATE subscribers SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?"
        return await self._change(subscriber_id, sql, (reason, time.time(), subscriber_id))

    async def delete(self, subscriber_id: str) -> Change | None:
        """Remove a subscriber; None if it did not exist."""
        sql = "DELETE FROM subscribers WHERE id = ?"
        return await self._change(subscriber_id, sql, (subscriber_id,))

    async def _change(self, subscriber_id: str, sql: str, params: Iterable[Any]) -> Change | None:
        """Run one statement on one subscriber; the change it made, or None."""

        def work(conn: sqlite3.Connection) -> Change | None:
            if conn.execute(sql, tuple(params)).rowcount == 0:
                return None
            row = conn.execute(
                f"SELECT {COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,)
            ).fetchone()
            return Change(_last_version(conn), subscriber_id, None if row is None else dict(row))

        return await self.db.run_in_commit(work, durable=True)

    async def rows(self) -> list[dict[str, Any]]:
        """Every subscriber row, oldest first."""
        rows = await self.db.fetchall(f"SELECT {COLUMNS} FROM subscribers ORDER BY created_at, id")
        return [dict(row) for row in rows]

    async def page(self, after: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows in order (created_at, id), from the one after `after`."""
        where, params = ("WHERE (created_at, id) > (?, ?)", [*after]) if after else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {COLUMNS} FROM subscribers {where} ORDER BY created_at, id LIMIT ?",
            [*params, limit],
        )
        return [dict(row) for row in rows]

    async def version(self) -> int:
        """The latest change's version: every change up to it is in the table."""
        row = await self.db.fetchone(LAST_VERSION)
        return int(row[0]) if row else 0

    async def changes_since(self, version: int, limit: int) -> list[Change] | None:
        """Up to `limit` changes after `version`, oldest first, each with the row as it is
        now; None when the log was pruned past `version` (read everything again)."""
        rows = await self.db.fetchall(
            f"SELECT c.version AS change_version, c.subscriber_id AS change_id, {COLUMNS} "
            "FROM subscriber_changes AS c LEFT JOIN subscribers ON id = c.subscriber_id "
            "WHERE c.version > ? ORDER BY c.version LIMIT ?",
            (version, limit),
        )
        pruned = await self.db.fetchone(
            "SELECT value FROM meta WHERE key = 'subscriber_changes_pruned'"
        )
        if pruned is not None and int(pruned[0]) > version:
            return None
        return [
            Change(
                row["change_version"],
                row["change_id"],
                None if row["id"] is None else _row(dict(row)),
            )
            for row in rows
        ]

    async def prune_changes(self, before: float) -> int:
        """Forget changes recorded before `before` (Unix time); how many."""

        def work(conn: sqlite3.Connection) -> int:
            kept = conn.execute(
                "SELECT version FROM subscriber_changes WHERE at >= ? ORDER BY version LIMIT 1",
                (before,),
            ).fetchone()
            last = kept[0] - 1 if kept else _last_version(conn)
            cursor = conn.execute("DELETE FROM subscriber_changes WHERE version <= ?", (last,))
            if cursor.rowcount:
                conn.execute(
                    "UPDATE meta SET value = max(value, ?) WHERE key = 'subscriber_changes_pruned'",
                    (last,),
                )
            return cursor.rowcount

        return await self.db.run_in_commit(work)


LAST_VERSION = "SELECT seq FROM sqlite_sequence WHERE name = 'subscriber_changes'"
NEW_ROW = {
    "filter_expression": "True",
    "enabled": True,
    "disabled_reason": None,
    "secret": None,
    "description": "",
}


def _row(fields: dict[str, Any]) -> dict[str, Any]:
    """The columns of a subscriber row, in order."""
    return {name: fields[name] for name in COLUMN_NAMES}


def _last_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(LAST_VERSION).fetchone()
    return int(row[0]) if row else 0


class Slicer:
    """Gives the event loop a turn each time SLICE_SECONDS of work have passed: call
    `await tick()` after each small step of a long task."""

    def __init__(self) -> None:
        self._until = time.perf_counter() + SLICE_SECONDS

    async def tick(self) -> None:
        if time.perf_counter() >= self._until:
            await asyncio.sleep(0)
            self._until = time.perf_counter() + SLICE_SECONDS
