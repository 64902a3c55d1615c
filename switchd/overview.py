"""`GET /overview`: what the console's Overview charts, read from the delivery log.

Per-minute counts over a recent window: events published (test deliveries excluded),
HTTP attempts delivered and failed (transient or permanent; test deliveries included),
dead letters created. Plus the queue's state: depth and oldest waiting job of
switchd's own queue (under Faktory: the jobs spilled there during outages), the backend
and its Faktory state, and readiness.
"""

from __future__ import annotations

import math
import time
from typing import Any

from switchd.db import Database
from switchd.service import Switchd

BUCKET_SECONDS = 60
DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60
SERIES = {  # name: (table, time column, extra condition)
    "published": ("events", "received_at", "test = 0"),
    "delivered": ("attempts", "at", "outcome = 'delivered'"),
    "failed": ("attempts", "at", "outcome != 'delivered'"),
    "dead": ("dead_letters", "dead_at", "1"),
}
COUNT_PER_BUCKET = (
    "SELECT CAST(({column} - ?) / {bucket} AS INTEGER) AS bucket, COUNT(*) AS n "
    "FROM {table} WHERE {column} >= ? AND {column} < ? AND {extra} GROUP BY bucket"
)


async def series(db: Database, minutes: int, now: float) -> tuple[float, dict[str, list[int]]]:
    """The start of the first bucket (whole minutes, the last one is the current minute)
    and each series' count per bucket, oldest first."""
    end = (math.floor(now / BUCKET_SECONDS) + 1) * BUCKET_SECONDS
    start = end - minutes * BUCKET_SECONDS
    counts: dict[str, list[int]] = {}
    for name, (table, column, extra) in SERIES.items():
        sql = COUNT_PER_BUCKET.format(
            column=column, table=table, extra=extra, bucket=BUCKET_SECONDS
        )
        buckets = [0] * minutes
        for row in await db.fetchall(sql, (start, start, end)):
            buckets[row["bucket"]] = row["n"]
        counts[name] = buckets
    return start, counts


async def queue_state(service: Switchd, now: float) -> dict[str, Any]:
    """The queue backend's status with the depth and oldest job age of the local queue."""
    depth, oldest = await service.local_queue.stats()
    return {
        **service.queue_status(),
        "depth": depth,
        "oldest_age_seconds": max(0.0, now - oldest) if oldest is not None else None,
    }


async def overview(service: Switchd, minutes: int) -> dict[str, Any]:
    """The `GET /overview` body."""
    now = time.time()
    start, counts = await series(service.db, minutes, now)
    reasons = await service.readiness()
    return {
        "now": now,
        "start": start,
        "bucket_seconds": BUCKET_SECONDS,
        "series": counts,
        "totals": {name: sum(values) for name, values in counts.items()},
        "queue": await queue_state(service, now),
        "ready": not reasons,
        "reasons": reasons,
    }
