"""`switchd dead …`: inspect, replay and purge dead letters in the database."""

from __future__ import annotations

import argparse

from switchd.cli.common import (
    CommandFailed,
    UsageError,
    add_db_option,
    add_json_option,
    emit,
    open_db,
    print_json,
    print_table,
)
from switchd.config import Settings
from switchd.db import Database
from switchd.dead_letters import DeadFilter, DeadLetterStore, ReplayRefused, replay
from switchd.queue.local import LocalQueue
from switchd.registry import Registry
from switchd.subscribers import SubscriberStore

LIST_COLUMNS = ("id", "dead_at", "topic", "subscriber_id", "attempts", "last_status", "last_error")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `dead` and its actions to the parser."""
    group = commands.add_parser("dead", help="list, replay or purge dead letters")
    actions = group.add_subparsers(dest="action", required=True, parser_class=type(group))
    listing = actions.add_parser("list", help="newest dead letters first")
    listing.add_argument("--subscriber")
    listing.add_argument("--topic")
    listing.add_argument("--limit", type=int, default=50)
    replayer = actions.add_parser("replay", help="deliver dead letters again")
    purger = actions.add_parser("purge", help="delete dead letters")
    for parser in (replayer, purger):
        parser.add_argument("ids", nargs="*", type=int, metavar="ID")
        parser.add_argument("--subscriber")
        parser.add_argument("--topic")
        parser.add_argument("--all", action="store_true", help="every dead letter")
    for parser in (listing, replayer, purger):
        add_db_option(parser)
        add_json_option(parser)
    group.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    async with open_db(args.db) as db:
        store = DeadLetterStore(db)
        if args.action == "list":
            return await _list(store, args)
        where = _selection(args)
        if args.action == "replay":
            return await _replay(db, store, where, args)
        count = await store.delete(where)
        emit(args, {"purged": count}, f"purged {count} dead letter(s)")
        return 0


async def _list(store: DeadLetterStore, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    where = DeadFilter(subscriber_id=args.subscriber, topic=args.topic)
    records, _ = await store.page(where, args.limit)
    if args.json:
        print_json(records)
    else:
        print_table(records, LIST_COLUMNS)
    return 0


async def _replay(
    db: Database, store: DeadLetterStore, where: DeadFilter, args: argparse.Namespace
) -> int:
    registry = Registry(SubscriberStore(db))
    await registry.reload()
    if not where.ids:  # bulk: what was already replayed stays replayed
        where = DeadFilter(where.subscriber_id, where.topic, replayed=False)
    records = await store.with_payloads(where)
    queue = LocalQueue(db, Settings(jwt_secret="unused", db_name=db.path))
    try:
        count = await replay(store, queue, registry.get, records, strict=len(where.ids) == 1)
    except ReplayRefused as exc:
        raise CommandFailed(str(exc)) from exc
    skipped = len(records) - count
    emit(
        args,
        {"replayed": count, "skipped": skipped},
        f"replayed {count} dead letter(s), skipped {skipped} (subscriber deleted or disabled)",
    )
    return 0


def _selection(args: argparse.Namespace) -> DeadFilter:
    chosen = bool(args.ids) + (args.subscriber is not None or args.topic is not None) + args.all
    if chosen != 1:
        raise UsageError("choose dead letters: IDs, --subscriber/--topic, or --all")
    return DeadFilter(subscriber_id=args.subscriber, topic=args.topic, ids=tuple(args.ids))
