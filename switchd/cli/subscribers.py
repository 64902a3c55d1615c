"""`switchd subscribers …`: manage subscribers in the database, server running or not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from switchd.cli.common import (
    CommandFailed,
    UsageError,
    add_db_option,
    add_json_option,
    emit,
    open_db,
    print_json,
    print_record,
    print_table,
)
from switchd.db import Database
from switchd.errors import ApiError
from switchd.registry import Registry
from switchd.subscribers import (
    SubscriberStore,
    identity,
    validate_fields,
    validate_import,
)

LIST_COLUMNS = ("id", "topic", "enabled", "target_url", "filter_expression")
EXPORTED = ("topic", "target_url", "filter_expression", "enabled", "description")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `subscribers` and its actions to the parser."""
    group = commands.add_parser("subscribers", help="add, list, change, import, export")
    actions = group.add_subparsers(dest="action", required=True, parser_class=type(group))

    add = actions.add_parser("add", help="create a subscriber")
    add.add_argument("--topic", required=True)
    add.add_argument("--url", required=True, dest="target_url")
    add.add_argument("--filter", dest="filter_expression", default="True")
    add.add_argument("--secret", action="store_true", help="generate a signing secret")
    add.add_argument("--description", default="")
    add.add_argument("--disabled", action="store_true", help="create it disabled")

    listing = actions.add_parser("list", help="list subscribers")
    listing.add_argument("--topic")

    show = actions.add_parser("show", help="show one subscriber")
    show.add_argument("id")

    update = actions.add_parser("update", help="change a subscriber")
    update.add_argument("id")
    update.add_argument("--topic")
    update.add_argument("--url", dest="target_url")
    update.add_argument("--filter", dest="filter_expression")
    update.add_argument("--description")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_true", default=None)
    state.add_argument("--disable", dest="enabled", action="store_false")
    secret = update.add_mutually_exclusive_group()
    secret.add_argument("--rotate-secret", action="store_true")
    secret.add_argument("--remove-secret", action="store_true")

    remove = actions.add_parser("remove", help="delete a subscriber")
    remove.add_argument("id")

    load = actions.add_parser("import", help="add subscribers from a JSON list (file or -)")
    load.add_argument("file")

    dump = actions.add_parser("export", help="print every subscriber as a JSON list")
    dump.add_argument("--with-secrets", action="store_true")

    for parser in (add, listing, show, update, remove, load, dump):
        add_db_option(parser)
        add_json_option(parser)
    group.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    creating = args.action in ("add", "import")
    async with open_db(args.db, create=creating) as db:
        return await ACTIONS[args.action](db, args)


async def _add(db: Database, args: argparse.Namespace) -> int:
    fields = {
        "topic": args.topic,
        "target_url": args.target_url,
        "filter_expression": args.filter_expression,
        "description": args.description,
        "enabled": not args.disabled,
        "secret": True if args.secret else None,
    }
    change = await SubscriberStore(db).create(_validated(fields, partial=False))
    _show(await _registry(db), change.id, args, show_secret=True)
    return 0


async def _list(db: Database, args: argparse.Namespace) -> int:
    registry = await _registry(db)
    items = [s.public() for s in registry.by_id.values() if args.topic in (None, s.topic)]
    if args.json:
        print_json(items)
    else:
        print_table(items, LIST_COLUMNS)
    return 0


async def _show_cmd(db: Database, args: argparse.Namespace) -> int:
    _show(await _registry(db), args.id, args)
    return 0


async def _update(db: Database, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("topic", "target_url", "filter_expression", "description", "enabled")
        if getattr(args, name) is not None
    }
    if args.rotate_secret or args.remove_secret:
        fields["secret"] = bool(args.rotate_secret)
    if not fields:
        raise UsageError("nothing to change: give at least one option")
    if not await SubscriberStore(db).update(args.id, _validated(fields, partial=True)):
        raise CommandFailed(f"no subscriber {args.id!r}")
    _show(await _registry(db), args.id, args, show_secret=args.rotate_secret)
    return 0


async def _remove(db: Database, args: argparse.Namespace) -> int:
    if not await SubscriberStore(db).delete(args.id):
        raise CommandFailed(f"no subscriber {args.id!r}")
    emit(args, {"removed": args.id}, f"removed {args.id}")
    return 0


async def _import(db: Database, args: argparse.Namespace) -> int:
    try:
        clean = await validate_import(_read_import(args.file))
    except ApiError as exc:
        raise UsageError(exc.message) from exc
    store = SubscriberStore(db)
    existing = {identity(row) for row in await store.rows()}
    created = await store.create_many([item for item in clean if identity(item) not in existing])
    result = {"created": len(created), "skipped": len(clean) - len(created)}
    emit(args, result, f"created {result['created']}, skipped {result['skipped']}")
    return 0


async def _export(db: Database, args: argparse.Namespace) -> int:
    rows = await SubscriberStore(db).rows()
    names = (*EXPORTED, "secret") if args.with_secrets else EXPORTED
    print_json(
        [
            {name: row[name] if name != "enabled" else bool(row[name]) for name in names}
            for row in rows
        ]
    )
    return 0


def _read_import(path: str) -> list[Any]:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        items = orjson.loads(raw)
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise UsageError(f"{path} must hold a JSON list of subscribers")
    return items


def _validated(fields: dict[str, Any], partial: bool) -> dict[str, Any]:
    try:
        return validate_fields(fields, partial=partial)
    except ApiError as exc:
        raise UsageError(exc.message) from exc


async def _registry(db: Database) -> Registry:
    registry = Registry(SubscriberStore(db))
    await registry.reload()
    return registry


def _show(
    registry: Registry, subscriber_id: str, args: argparse.Namespace, show_secret: bool = False
) -> None:
    subscriber = registry.get(subscriber_id)
    if subscriber is None:
        raise CommandFailed(f"no subscriber {subscriber_id!r}")
    record = subscriber.public(show_secret=show_secret)
    if args.json:
        print_json(record)
    else:
        print_record(record)


ACTIONS = {
    "add": _add,
    "list": _list,
    "show": _show_cmd,
    "update": _update,
    "remove": _remove,
    "import": _import,
    "export": _export,
}
