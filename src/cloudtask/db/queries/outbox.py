"""Queries on ``outbox``: messages written in the same transaction as the change they announce."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
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


# The ids twice: with only the locking subquery to go by, PostgreSQL joined it to a sequential
# scan of the whole table (dead rows included, where autovacuum lags) for every batch. One array
# rather than an IN list: one statement, prepared once, whatever the count. On the asyncpg
# connection itself: this runs once per batch the api publishes, at a low rate once per job, and
# SQLAlchemy's building and compiling of the statement cost more than the statement (py-spy at
# 300 jobs/s).
_TAKE = (
    "DELETE FROM outbox WHERE id = ANY($1::int8[]) AND id IN"
    " (SELECT id FROM outbox WHERE id = ANY($1::int8[]) FOR UPDATE SKIP LOCKED)"
    " RETURNING id"
)


@asynccontextmanager
async def taking(conn: AsyncConnection, ids: Sequence[int]) -> AsyncIterator[set[int]]:
    """Delete the rows ``ids`` that still exist and that no relay holds; yields their ids.

    The caller publishes them inside the block: the delete commits when the block ends, and an
    exception rolls it back, so a failed publish leaves the rows to the relay. On PostgreSQL
    the delete runs in a transaction of its own on the asyncpg connection (``conn``'s, still
    unused, so SQLAlchemy has not begun one there: it begins lazily); on SQLite in ``conn``'s.
    """
    if not ids:
        yield set()
        return
    if conn.dialect.name == "postgresql":
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None  # noqa: S101 - a checked-out connection has its driver's
        async with driver.transaction():
            yield {row[0] for row in await driver.fetch(_TAKE, list(ids))}
        return
    # SQLite has no row locks to skip: one writer at a time.
    rows = await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)).returning(outbox.c.id))
    yield set(rows.scalars().all())


async def remove(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))


async def backlog(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was written."""
    row = (await conn.execute(select(func.count(), func.min(outbox.c.created_at)))).one()
    return int(row[0]), row[1]
