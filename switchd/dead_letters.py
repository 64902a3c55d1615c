"""The dead-letter store: deliveries that failed for good, kept for inspection and replay.

Whatever the queue backend, dead letters live in the switchd database.
"""

from __future__ import annotations

import time

import orjson

from switchd.db import Statement
from switchd.delivery import Outcome
from switchd.models import Job

INSERT_DEAD = (
    "INSERT INTO dead_letters (event_id, subscriber_id, topic, author, target_url, "
    "filter_expression, attempts, last_status, last_error, first_attempt_at, last_attempt_at, "
    "dead_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def bury(job: Job, outcome: Outcome) -> Statement:
    """The statement recording `job` as dead after `outcome` (run it in one transaction
    with the job's removal from its queue)."""
    return (
        INSERT_DEAD,
        (
            job.event_id,
            job.subscriber_id,
            job.topic,
            job.author,
            job.target_url,
            job.filter_expression,
            job.attempts + outcome.requests,
            outcome.status,
            outcome.error,
            job.first_attempt_at or outcome.finished_at,
            outcome.finished_at,
            time.time(),
            orjson.dumps(job.payload),
        ),
    )
