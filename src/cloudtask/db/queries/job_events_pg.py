"""PostgreSQL's batched form of ``job_events``: a whole batch of events in one statement.

The events are passed as arrays and joined to ``jobs`` with ``unnest``; the conditions are those of
``job_events`` (same attempt, still open), so the outcome is the same as applying them one by one,
in one round trip instead of one per event.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BOOLEAN, INTEGER, TEXT, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.contracts.messages import JobStarted

_STARTED = text(
    """
    UPDATE jobs AS j
    SET status = 'RUNNING', attempts = e.attempt, started_at = e.started_at, updated_at = :now
    FROM unnest(:ids, :attempts, :started) AS e(id, attempt, started_at)
    WHERE j.id = e.id AND j.dispatch_attempt = e.attempt
      AND (j.status = 'PENDING'
           OR (j.status = 'RUNNING' AND j.attempts < e.attempt)
           OR (j.status = 'RUNNING' AND j.attempts = e.attempt AND j.started_at < e.started_at
               AND e.started_at <> :now))
    RETURNING j.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(PG_UUID(as_uuid=True))),
    bindparam("attempts", type_=ARRAY(INTEGER)),
    bindparam("started", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("now", type_=TIMESTAMP(timezone=True)),
)

# In SET, j.* are the values before the update. "retried": failed, retryable, attempts left and
# no cancel asked for.
_FINISHED = text(
    """
    UPDATE jobs AS j
    SET status = CASE
            WHEN e.completed THEN 'COMPLETED'
            WHEN j.cancel_requested THEN 'CANCELLED'
            WHEN e.retryable AND j.max_attempts > e.attempt THEN 'SCHEDULED'
            ELSE 'FAILED' END,
        attempts = GREATEST(j.attempts, e.attempt),
        started_at = CASE WHEN j.attempts < e.attempt THEN e.started_at ELSE j.started_at END,
        result = CASE WHEN e.completed THEN e.result ELSE j.result END,
        error = CASE WHEN e.completed THEN NULL ELSE e.error END,
        finished_at = CASE
            WHEN NOT e.completed AND NOT j.cancel_requested AND e.retryable
                 AND j.max_attempts > e.attempt THEN NULL
            ELSE e.finished_at END,
        run_at = CASE
            WHEN NOT e.completed AND NOT j.cancel_requested AND e.retryable
                 AND j.max_attempts > e.attempt THEN e.retry_at
            ELSE j.run_at END,
        updated_at = :now
    FROM unnest(:ids, :attempts, :completed, :results, :errors, :retryable, :started, :finished,
                :retry_at)
         AS e(id, attempt, completed, result, error, retryable, started_at, finished_at, retry_at)
    WHERE j.id = e.id AND j.dispatch_attempt = e.attempt AND j.status IN ('PENDING', 'RUNNING')
    RETURNING j.id, j.type, j.status, j.attempts, j.created_at, j.finished_at
    """
).bindparams(
    bindparam("ids", type_=ARRAY(PG_UUID(as_uuid=True))),
    bindparam("attempts", type_=ARRAY(INTEGER)),
    bindparam("completed", type_=ARRAY(BOOLEAN)),
    bindparam("results", type_=ARRAY(TEXT)),
    bindparam("errors", type_=ARRAY(TEXT)),
    bindparam("retryable", type_=ARRAY(BOOLEAN)),
    bindparam("started", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("finished", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("retry_at", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("now", type_=TIMESTAMP(timezone=True)),
)


async def apply_started(
    conn: AsyncConnection, events: Sequence[JobStarted], *, now: datetime
) -> list[UUID]:
    # One event per job and attempt, the latest start: a target row joined twice would take
    # either one.
    latest: dict[tuple[UUID, int], JobStarted] = {}
    for e in events:
        seen = latest.get((e.job_id, e.attempt))
        if seen is None or e.started_at > seen.started_at:
            latest[(e.job_id, e.attempt)] = e
    unique = list(latest.values())
    result = await conn.execute(
        _STARTED,
        {
            "ids": [e.job_id for e in unique],
            "attempts": [e.attempt for e in unique],
            "started": [e.started_at for e in unique],
            "now": now,
        },
    )
    return list(result.scalars().all())


async def apply_finished(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], *, now: datetime
) -> list[Any]:
    """``rows``: one dict per event with the keys of the statement's arrays, singular."""
    unique = list({(r["id"], r["attempt"]): r for r in reversed(rows)}.values())
    columns = {
        "ids": "id",
        "attempts": "attempt",
        "completed": "completed",
        "results": "result",
        "errors": "error",
        "retryable": "retryable",
        "started": "started_at",
        "finished": "finished_at",
        "retry_at": "retry_at",
    }
    params: dict[str, Any] = {name: [r[key] for r in unique] for name, key in columns.items()}
    params["now"] = now
    return list(await conn.execute(_FINISHED, params))
