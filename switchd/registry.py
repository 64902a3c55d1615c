"""The in-memory registry of subscribers used at publish time, changed incrementally.

It changes one subscriber at a time, in time proportional to that change: this process's
writes are applied as soon as they commit (`apply`, with the `Change` the store reports),
and every second the change log is read for other writers' (the CLI, another `switchd
serve`): only the changes after the version last applied (`catch_up`). Changes are plain
data, whatever their source, so another store can feed them too (e.g. LISTEN/NOTIFY).
A full reload (start-up, GET /refresh, a log pruned past that version) reads rows in
pages and builds a new index a slice at a time, so the event loop is never held for long.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from switchd.filter_index import TopicIndex
from switchd.filters import FilterError, compile_filter, never_matching
from switchd.subscribers import COLUMN_NAMES, Change, Identity, Slicer, Subscriber

log = structlog.get_logger("switchd.registry")

PAGE_ROWS = 500  # rows per read of a full reload or a catch-up (each read holds the GIL)
TOMBSTONE_SECONDS = 10.0  # a removed id is remembered this long (see _State.apply)


class SubscriberSource(Protocol):
    """What the registry reads from a store (SQL stays in the store)."""

    async def version(self) -> int:
        """The latest change's version: every change up to it is in the rows."""

    async def page(self, after: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
        """Rows in order (created_at, id), from the one after `after`."""

    async def changes_since(self, version: int, limit: int) -> list[Change] | None:
        """Changes after `version`, oldest first; None when they are no longer all known."""


class Registry:
    """The subscribers in memory, by id and by topic, kept up to date change by change."""

    def __init__(
        self, store: SubscriberSource, on_filter_error: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.on_filter_error = on_filter_error
        self.version = 0  # every change of the log up to this version is applied
        self.full_reloads = 0
        self._state = _State()
        self._journal: list[Change] | None = None  # changes applied while a reload runs
        self._lock = asyncio.Lock()  # one reader of the store at a time

    @property
    def by_id(self) -> dict[str, Subscriber]:
        """Every subscriber, enabled or not."""
        return self._state.by_id

    @property
    def by_topic(self) -> dict[str, TopicIndex]:
        """The enabled subscribers of each topic that has some."""
        return self._state.by_topic

    async def reload(self) -> int:
        """Read every row again (start-up, GET /refresh), then apply what changed
        meanwhile; return the number of subscribers."""
        async with self._lock:
            await self._rebuild()
            await self._catch_up()
        return len(self.by_id)

    async def catch_up(self) -> int:
        """Apply what every writer changed since the version applied (a full reload when
        the change log no longer goes back that far); return how many changes were new
        (this process's own were applied when they committed)."""
        async with self._lock:
            return await self._catch_up()

    async def apply(self, changes: Iterable[Change]) -> None:
        """Apply changes as a store reported them (this process's writes, or changes
        pushed by another node); a change older than what is held is ignored."""
        changes = list(changes)
        if self._journal is not None:
            self._journal.extend(changes)
        await self._apply(changes)

    def matching(self, topic: str, payload: dict[str, Any]) -> list[Subscriber]:
        """Enabled subscribers of `topic` whose filter accepts `payload`."""
        index = self.by_topic.get(topic)
        return index.matching(payload) if index is not None else []  # type: ignore[return-value]

    def topic_label(self, topic: str) -> str:
        """`topic` if some enabled subscriber listens to it, else "other" (bounded labels)."""
        return topic if topic in self.by_topic else "other"

    def get(self, subscriber_id: str | None) -> Subscriber | None:
        """A subscriber by id, or None."""
        return self.by_id.get(subscriber_id) if subscriber_id else None

    async def identical(self, wanted: set[Identity]) -> dict[Identity, str]:
        """Which of `wanted` some subscriber has, each with the oldest such one's id."""
        found: dict[Identity, Subscriber] = {}
        slicer = Slicer()
        for subscriber in list(self.by_id.values()):
            key = (subscriber.topic, subscriber.target_url, subscriber.filter_expression)
            if key in wanted and (key not in found or subscriber.order < found[key].order):
                found[key] = subscriber
            await slicer.tick()
        return {key: subscriber.id for key, subscriber in found.items()}

    async def _apply(self, changes: list[Change]) -> int:
        """Apply changes a slice at a time; how many were newer than what was held."""
        applied = 0
        slicer = Slicer()
        for change in {change.id: change for change in changes}.values():
            applied += self._state.apply(change, self._subscriber)
            await slicer.tick()
        return applied

    async def _catch_up(self) -> int:
        applied = 0
        while True:
            changes = await self.store.changes_since(self.version, PAGE_ROWS)
            if changes is None:
                log.warning("subscriber_changes_pruned", version=self.version)
                await self._rebuild()
                continue
            applied += await self._apply(changes)
            if changes:
                self.version = changes[-1].version
            if len(changes) < PAGE_ROWS:
                self._state.forget_removed(self.version)
                return applied

    async def _rebuild(self) -> None:
        """Build a new state from every row, then swap it in."""
        version = await self.store.version()
        old, self._journal = self._state, []
        fresh = _State(removed=dict(old.removed))
        try:
            slicer = Slicer()
            after = None
            while True:
                rows = await self.store.page(after, PAGE_ROWS)
                for row in rows:
                    fresh.apply(Change(version, row["id"], row), self._subscriber, old.by_id)
                    await slicer.tick()
                if len(rows) < PAGE_ROWS:
                    break
                after = (rows[-1]["created_at"], rows[-1]["id"])
            for change in self._journal:
                fresh.apply(change, self._subscriber, old.by_id)
        finally:
            self._journal = None
        self._state, self.version = fresh, version
        self.full_reloads += 1
        await old.release()

    def _subscriber(
        self, row: dict[str, Any], version: int, previous: Subscriber | None
    ) -> Subscriber:
        """The subscriber of a row; `previous` itself when the row is unchanged (a full
        reload then allocates almost nothing: no garbage collection pauses)."""
        if previous is not None and _unchanged(previous, row):
            return previous
        source = row["filter_expression"]
        if previous is not None and previous.filter_expression == source:
            compiled = previous.compiled
        else:
            try:
                compiled = compile_filter(source)
            except FilterError as exc:
                log.error("filter_invalid", subscriber_id=row["id"], error=str(exc))
                compiled = never_matching(source)
            compiled.on_error = self.on_filter_error
        return Subscriber(
            **{**row, "topic": sys.intern(row["topic"]), "enabled": bool(row["enabled"])},
            compiled=compiled,
            version=version,
        )


def _unchanged(subscriber: Subscriber, row: dict[str, Any]) -> bool:
    return all(getattr(subscriber, name) == row[name] for name in COLUMN_NAMES)


class _State:
    """What the registry holds: subscribers by id and by topic, and recent removals."""

    def __init__(self, removed: dict[str, tuple[int, float]] | None = None) -> None:
        self.by_id: dict[str, Subscriber] = {}
        self.by_topic: dict[str, TopicIndex] = {}
        # id -> (version, time.monotonic()) of its removal, oldest first: a change applied
        # late (its commit raced a later one's) must not bring a removed subscriber back.
        self.removed = removed if removed is not None else {}

    def apply(
        self,
        change: Change,
        make: Callable[[dict[str, Any], int, Subscriber | None], Subscriber],
        reuse: Mapping[str, Subscriber] | None = None,
    ) -> bool:
        """Apply one change unless what is held is as new or newer; whether it did."""
        current = self.by_id.get(change.id)
        held = current.version if current else self.removed.get(change.id, (-1, 0.0))[0]
        if change.version <= held:
            return False
        if current is not None and current.enabled:
            self._unfile(current)
        if change.row is None:
            self.by_id.pop(change.id, None)
            self.removed.pop(change.id, None)
            self.removed[change.id] = (change.version, time.monotonic())
            return True
        previous = current or (reuse.get(change.id) if reuse is not None else None)
        subscriber = make(change.row, change.version, previous)
        self.by_id[change.id] = subscriber
        self.removed.pop(change.id, None)
        if subscriber.enabled:
            self.by_topic.setdefault(subscriber.topic, TopicIndex()).add(subscriber)
        return True

    def _unfile(self, subscriber: Subscriber) -> None:
        index = self.by_topic[subscriber.topic]
        index.remove(subscriber)
        if not index:
            del self.by_topic[subscriber.topic]

    def forget_removed(self, version: int) -> None:
        """Drop removals the change log has been read past, once they are old enough."""
        deadline = time.monotonic() - TOMBSTONE_SECONDS
        while self.removed:
            subscriber_id, (removed_at, when) = next(iter(self.removed.items()))
            if removed_at > version or when > deadline:
                return
            del self.removed[subscriber_id]

    async def release(self) -> None:
        """Let go of everything a slice at a time: freeing 100,000 subscribers at once
        would hold the event loop for tens of milliseconds."""
        slicer = Slicer()
        for index in self.by_topic.values():
            for _ in index.drain():
                await slicer.tick()
        self.by_topic.clear()
        while self.by_id:
            self.by_id.popitem()
            await slicer.tick()
