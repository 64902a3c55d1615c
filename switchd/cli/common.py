"""What every command shares: one-line errors, output as tables or JSON, the database."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import orjson

from switchd.db import Database

MAX_CELL = 60


class UsageError(Exception):
    """A bad command line or value: printed as one line, exit code 2."""


class CommandFailed(Exception):
    """The command could not do its work: printed as one line, exit code 1."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """`--db PATH`, defaulting to $SWITCH_DB_NAME or switch.db."""
    parser.add_argument(
        "--db",
        default=os.environ.get("SWITCH_DB_NAME") or "switch.db",
        help="SQLite file (default: $SWITCH_DB_NAME or switch.db)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """`--json` for machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@asynccontextmanager
async def open_db(path: str, create: bool = False) -> AsyncIterator[Database]:
    """The database at `path`; refuse a missing file unless `create`."""
    if not create and not await asyncio.to_thread(Path(path).exists):
        raise CommandFailed(f"no database at {path} (set SWITCH_DB_NAME or pass --db)")
    db = Database(path)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain text table; long cells are shortened."""
    if not rows:
        print("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )


def print_record(record: dict[str, Any]) -> None:
    """One record as `key: value` lines."""
    width = max(len(k) for k in record)
    for key, value in record.items():
        print(f"{key.ljust(width)}  {_cell(value, limit=None)}")


def _cell(value: Any, limit: int | None = MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """`data` as JSON with --json, else the sentence `text`."""
    if args.json:
        print_json(data)
    else:
        print(text)
