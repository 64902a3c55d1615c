"""Newest-first keyset pagination, shared by the dead-letter and event listings.

A page is the rows before a cursor (an integer key, newest first), plus the cursor of the
next page: stable while rows are added, cheap at any depth (no OFFSET).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from switchd.db import Database

DEFAULT_PAGE = 50
MAX_PAGE = 500


def where_sql(clauses: Sequence[str]) -> str:
    """` WHERE a AND b …`, or nothing when there are no clauses."""
    return " WHERE " + " AND ".join(clauses) if clauses else ""


async def newest_first(
    db: Database,
    select: str,
    conditions: tuple[list[str], list[Any]],
    key: str,
    limit: int,
    before: int | None,
    column: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of `select` (`SELECT … FROM …`, no WHERE) filtered by `conditions`
    (clauses and their parameters), ordered by the integer SQL expression `key` newest
    first, with keys below `before` when given. `limit` is clamped to 1..MAX_PAGE.
    Returns the rows and the next page's cursor (the last row's `column`, default `key`),
    None on the last page."""
    clauses, params = list(conditions[0]), list(conditions[1])
    if before is not None:
        clauses.append(f"{key} < ?")
        params.append(before)
    limit = max(1, min(limit, MAX_PAGE))
    rows = await db.fetchall(
        f"{select}{where_sql(clauses)} ORDER BY {key} DESC LIMIT ?", [*params, limit + 1]
    )
    records = [dict(row) for row in rows[:limit]]
    return records, (records[-1][column or key] if len(rows) > limit else None)
