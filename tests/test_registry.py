"""The incremental registry (DESIGN §12): changed one subscriber at a time, it holds exactly
what a full reload builds; other writers' changes arrive through the change log."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchd.db import Database
from switchd.registry import Registry
from switchd.subscribers import Change, SubscriberStore, validate_fields
from tests.conftest import Sink, StartSwitchd
from tests.test_cli import cli

TOPICS = ["a", "b"]
FILTERS = [
    "True",
    'data["c"] == "c1"',
    'data["c"] == "c2"',
    'data["n"] > 1',
    'data["c"] == "c1" and data["n"] > 1',
    'data["c"] == "c" + "2" or data["n"] == 3',
]
PAYLOADS = [{}, {"c": "c1"}, {"c": "c2", "n": 2}, {"c": "c1", "n": 3}, {"n": 0}]
# This process (its changes applied at once, or "late": after later ones, as when commits
# race), or another writer of the file (its changes seen through the change log).
WRITERS = st.sampled_from(["here", "late", "there"])
TARGET = st.integers(0, 15)  # the n-th subscriber ever created (mod their number)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "topic": st.sampled_from(TOPICS),
        "filter_expression": st.sampled_from(FILTERS),
        "target_url": st.sampled_from(["http://127.0.0.1:9/x", "http://127.0.0.1:9/y"]),
        "enabled": st.booleans(),
    },
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), WRITERS, st.sampled_from(TOPICS), st.sampled_from(FILTERS)),
        st.tuples(st.just("create_many"), WRITERS, st.lists(st.sampled_from(FILTERS), max_size=3)),
        st.tuples(st.just("update"), WRITERS, TARGET, FIELDS),
        st.tuples(st.just("disable"), WRITERS, TARGET),
        st.tuples(st.just("delete"), WRITERS, TARGET),
        st.just(("catch_up",)),
        st.just(("reload",)),
        st.just(("deliver_late",)),
    ),
    max_size=25,
)


def snapshot(registry: Registry) -> tuple[Any, ...]:
    """What the publish path and the API read: subscribers by id, each topic's enabled
    subscribers in order, and who matches each sample payload."""
    return (
        dict(registry.by_id),
        {topic: [s.id for s in index.members()] for topic, index in registry.by_topic.items()},
        {
            (topic, n): [s.id for s in registry.matching(topic, payload)]
            for topic in TOPICS
            for n, payload in enumerate(PAYLOADS)
        },
    )


class World:
    """A database file with a registry, and two writers: this process's store (whose
    changes the registry applies at once) and another connection's (seen through the
    change log only)."""

    def __init__(self, path: Path) -> None:
        self.here_db, self.there_db = Database(str(path)), Database(str(path))
        self.here, self.there = SubscriberStore(self.here_db), SubscriberStore(self.there_db)
        self.registry = Registry(self.here)
        self.ids: list[str] = []
        self.reloads = 0
        self.late: list[Change] = []

    async def __aenter__(self) -> World:
        await self.here_db.open()
        await self.there_db.open()
        await self.registry.reload()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.there_db.close()
        await self.here_db.close()

    async def run(self, operation: tuple[Any, ...]) -> None:
        kind, *args = operation
        if kind == "catch_up":
            await self.registry.catch_up()
        elif kind == "reload":
            await self.registry.reload()
            self.reloads += 1
        elif kind == "deliver_late":
            await self.registry.apply(reversed(self.late))
            self.late = []
        else:
            writer, *args = args
            store = self.there if writer == "there" else self.here
            changes = await getattr(self, kind)(store, *args)
            if writer == "late":
                self.late += changes
            elif writer == "here":
                await self.registry.apply(changes)
                for change in changes:  # visible at once
                    held = self.registry.get(change.id)
                    assert (held and held.public(show_secret=True)) == _public(change.row)

    async def create(self, store: SubscriberStore, topic: str, source: str) -> list[Change]:
        return await self.create_many(store, [source], topic)

    async def create_many(self, store: SubscriberStore, sources: list[str], topic: str = "a"):
        fields = [
            validate_fields(
                {"topic": topic, "target_url": f"http://127.0.0.1:9/{n}", "filter_expression": s},
                partial=False,
            )
            for n, s in enumerate(sources)
        ]
        changes = await store.create_many(fields)
        self.ids += [change.id for change in changes]
        return changes

    async def update(self, store: SubscriberStore, target: int, fields: dict[str, Any]):
        if not self.ids or not fields:
            return []
        change = await store.update(self.ids[target % len(self.ids)], validate_fields(fields, True))
        return [change] if change else []

    async def disable(self, store: SubscriberStore, target: int) -> list[Change]:
        if not self.ids:
            return []
        change = await store.disable(self.ids[target % len(self.ids)], "endpoint answered 410")
        return [change] if change else []

    async def delete(self, store: SubscriberStore, target: int) -> list[Change]:
        if not self.ids:
            return []
        change = await store.delete(self.ids[target % len(self.ids)])
        return [change] if change else []


def _public(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    public = {k: v for k, v in row.items() if k != "secret"}
    return {
        **public,
        "enabled": bool(row["enabled"]),
        "has_secret": row["secret"] is not None,
        "secret": row["secret"],
    }


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(OPERATIONS)
def test_incremental_registry_is_what_a_full_reload_builds(operations):
    async def scenario(path: Path) -> None:
        async with World(path) as world:
            for operation in operations:
                await world.run(operation)
            await world.run(("deliver_late",))
            await world.registry.catch_up()
            fresh = Registry(world.here)
            await fresh.reload()
            assert snapshot(world.registry) == snapshot(fresh)
            assert world.registry.full_reloads == 1 + world.reloads  # start-up, asked ones

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "registry.db"))


async def test_a_change_log_pruned_past_the_version_applied_means_a_full_reload(tmp_path: Path):
    async with World(tmp_path / "pruned.db") as world:
        await world.create(world.here, "a", "True")
        await world.registry.catch_up()
        await world.create(world.there, "a", 'data["c"] == "c1"')  # not polled yet
        assert await world.there.prune_changes(time.time() + 1) == 2  # every change so far
        await world.registry.catch_up()
        assert world.registry.full_reloads == 2
        fresh = Registry(world.here)
        await fresh.reload()
        assert snapshot(world.registry) == snapshot(fresh) and len(fresh.by_id) == 2


async def test_a_late_change_does_not_bring_a_removed_subscriber_back(tmp_path: Path):
    async with World(tmp_path / "late.db") as world:
        [created] = await world.create(world.here, "a", "True")
        update = await world.here.update(created.id, {"description": "x"})
        removal = await world.here.delete(created.id)
        assert update is not None and removal is not None
        await world.registry.apply([created, removal])
        await world.registry.apply([update])  # its commit came before the removal's
        assert world.registry.get(created.id) is None
        assert world.registry.matching("a", {}) == []


async def test_another_process_change_is_applied_within_the_poll_without_a_reload(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    registry = app.service.registry
    db = Path(app.service.settings.db_name)
    await app.add_subscriber(topic="t", target_url=sink.url("/here"))
    added = await cli(
        "subscribers", "add", "--topic", "t", "--url", sink.url("/cli"), "--json", db=db
    )
    assert added.code == 0, added.err
    cli_id = added.json()["id"]
    started = time.monotonic()
    while registry.get(cli_id) is None:
        assert time.monotonic() - started < 3.0, "the CLI's subscriber never arrived"
        await asyncio.sleep(0.02)
    assert time.monotonic() - started < 2.0  # within the 1 s poll (and some slack)
    assert registry.full_reloads == 1  # start-up only: the change came incrementally
    status, answer = await app.publish("t", {"body": {"n": 1}})
    assert status == 202 and answer["matched"] == 2
    await sink.wait_for(2)
    assert sorted(r.path for r in sink.requests) == ["/cli", "/here"]

    removed = await cli("subscribers", "remove", cli_id, db=db)
    assert removed.code == 0, removed.err
    started = time.monotonic()
    while registry.get(cli_id) is not None:
        assert time.monotonic() - started < 3.0, "the CLI's removal never arrived"
        await asyncio.sleep(0.02)
    assert registry.full_reloads == 1
    assert [s.target_url for s in registry.matching("t", {})] == [sink.url("/here")]


async def test_concurrent_subscriber_writes_share_commits(tmp_path: Path):
    async with World(tmp_path / "shared.db") as world:
        commits = world.here_db.commits
        fields = validate_fields({"topic": "t", "target_url": "http://127.0.0.1:9/x"}, False)
        created = await asyncio.gather(*(world.here.create(fields) for _ in range(32)))
        assert world.here_db.commits - commits == 1  # one transaction, one fsync for all
        updated = await asyncio.gather(
            *(world.here.update(change.id, {"description": "d"}) for change in created)
        )
        assert world.here_db.commits - commits == 2
        await world.registry.apply([change for change in updated if change])
        assert await world.registry.catch_up() == 0  # its own changes: applied already
        assert [s.description for s in world.registry.by_id.values()] == ["d"] * 32
