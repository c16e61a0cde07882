"""Queries on ``outbox``: messages written in the same transaction as the change they announce."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.db.tables import outbox


# Not frozen: one of each per job submitted, and a frozen dataclass costs five times as much to
# build (see JobRecord). Neither is changed after it is built.
@dataclass(slots=True)
class OutboxRow:
    id: int
    queue: str
    body: str
    priority: int


@dataclass(slots=True)
class NewOutboxMessage:
    queue: str
    body: str
    priority: int = 0


async def add(
    conn: AsyncConnection, messages: Sequence[NewOutboxMessage], *, now: datetime
) -> list[OutboxRow]:
    if not messages:
        return []
    result = await conn.execute(
        insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True),
        [
            {"queue": m.queue, "body": m.body, "priority": m.priority, "created_at": now}
            for m in messages
        ],
    )
    ids = result.scalars().all()
    return [OutboxRow(i, m.queue, m.body, m.priority) for i, m in zip(ids, messages, strict=True)]


async def claim_stale(
    conn: AsyncConnection, *, older_than: datetime, limit: int
) -> list[OutboxRow]:
    """Rows written before ``older_than`` and not yet confirmed, locked against other relays."""
    rows = await conn.execute(
        select(outbox.c.id, outbox.c.queue, outbox.c.body, outbox.c.priority)
        .where(outbox.c.created_at < older_than)
        .order_by(outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [OutboxRow(r.id, r.queue, r.body, r.priority) for r in rows]


async def take(conn: AsyncConnection, ids: Sequence[int]) -> set[int]:
    """Delete the rows ``ids`` that still exist and that no relay holds; returns their ids.

    The caller publishes them before its transaction commits, so a failed publish rolls the
    delete back; one statement where a lock and a delete took two (the publisher's hot path).
    """
    if not ids:
        return set()
    free = select(outbox.c.id).where(outbox.c.id.in_(ids)).with_for_update(skip_locked=True)
    # The ids twice: with only the subquery to go by, PostgreSQL joined it to a sequential scan
    # of the whole table (dead rows included, where autovacuum lags) for every batch.
    rows = await conn.execute(
        delete(outbox).where(outbox.c.id.in_(ids), outbox.c.id.in_(free)).returning(outbox.c.id)
    )
    return set(rows.scalars().all())


async def remove(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))


async def backlog(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was written."""
    row = (await conn.execute(select(func.count(), func.min(outbox.c.created_at)))).one()
    return int(row[0]), row[1]
