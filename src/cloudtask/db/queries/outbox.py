"""Queries on ``outbox``: messages written in the same transaction as the change they announce."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.db import session
from cloudtask.db.tables import outbox

# A row holds the messages committed together for one queue at one priority (a batch's jobs, a
# group commit's), up to MAX_MESSAGES and MAX_ROW_BYTES of bodies (a thousand payloads of
# 256 KiB would be one row of 256 MB to write, read and publish), as JSON Lines: one PostgreSQL
# row to write and delete rather than a thousand. Message bodies are compact JSON, which never
# holds a raw line break; a body that did would go in a row of its own.
SEPARATOR = "\n"
MAX_MESSAGES = 1000
MAX_ROW_BYTES = 4 * 1024 * 1024


# Not frozen: built for every write, and a frozen dataclass costs five times as much to build
# (see JobRecord). Neither is changed after it is built.
@dataclass(slots=True)
class OutboxRow:
    id: int
    queue: str
    bodies: list[str]
    priority: int


@dataclass(slots=True)
class NewOutboxMessage:
    queue: str
    body: str
    priority: int = 0


@dataclass(slots=True)
class NewOutboxRow:
    queue: str
    bodies: list[str]
    priority: int

    @property
    def body(self) -> str:
        return SEPARATOR.join(self.bodies)


def grouped(messages: Sequence[NewOutboxMessage]) -> list[NewOutboxRow]:
    """The rows that hold ``messages``: one per queue and priority (and per MAX_MESSAGES or
    MAX_ROW_BYTES of them), in the order each first appears, each message in its row in the
    order given."""
    rows: list[NewOutboxRow] = []
    filling: dict[tuple[str, int], tuple[NewOutboxRow, int]] = {}
    for message in messages:
        if SEPARATOR in message.body:  # see SEPARATOR
            rows.append(NewOutboxRow(message.queue, [message.body], message.priority))
            continue
        key = (message.queue, message.priority)
        row, size = filling.get(key, (None, 0))
        size += len(message.body)
        if row is None or len(row.bodies) >= MAX_MESSAGES or size > MAX_ROW_BYTES:
            row, size = NewOutboxRow(message.queue, [], message.priority), len(message.body)
            rows.append(row)
        filling[key] = (row, size)
        row.bodies.append(message.body)
    return rows


def message_count(rows: Sequence[OutboxRow]) -> int:
    return sum(len(row.bodies) for row in rows)


def bodies(body: str, messages: int) -> list[str]:
    """The message bodies of a stored row's ``body``, which holds ``messages`` of them."""
    return [body] if messages == 1 else body.split(SEPARATOR)


async def add(
    conn: AsyncConnection, messages: Sequence[NewOutboxMessage], *, now: datetime
) -> list[OutboxRow]:
    if not messages:
        return []
    new_rows = grouped(messages)
    result = await conn.execute(
        insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True),
        [
            {
                "queue": row.queue,
                "body": row.body,
                "priority": row.priority,
                "messages": len(row.bodies),
                "created_at": now,
            }
            for row in new_rows
        ],
    )
    ids = result.scalars().all()
    return [
        OutboxRow(i, row.queue, row.bodies, row.priority)
        for i, row in zip(ids, new_rows, strict=True)
    ]


async def claim_stale(
    conn: AsyncConnection, *, older_than: datetime, limit: int
) -> list[OutboxRow]:
    """Rows written before ``older_than`` and not yet confirmed, locked against other relays,
    oldest first: as many as hold at most ``limit`` messages, and at least one.

    Their sizes are read first and their bodies only for those taken: a row may hold a thousand
    messages. The rows locked but not taken are free again when the transaction ends.
    """
    sizes = await conn.execute(
        select(outbox.c.id, outbox.c.messages)
        .where(outbox.c.created_at < older_than)
        .order_by(outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids: list[int] = []
    total = 0
    for row_id, messages in sizes:
        if ids and total + messages > limit:
            break
        ids.append(row_id)
        total += messages
    if not ids:
        return []
    rows = await conn.execute(
        select(outbox.c.id, outbox.c.queue, outbox.c.body, outbox.c.priority, outbox.c.messages)
        .where(outbox.c.id.in_(ids))
        .order_by(outbox.c.id)
    )
    return [OutboxRow(r.id, r.queue, bodies(r.body, r.messages), r.priority) for r in rows]


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
        driver = await session.driver(conn)
        async with driver.transaction():
            yield {row[0] for row in await driver.fetch(_TAKE, list(ids))}
        return
    # SQLite has no row locks to skip: one writer at a time.
    rows = await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)).returning(outbox.c.id))
    yield set(rows.scalars().all())


async def remove(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))


async def remove_queue(conn: AsyncConnection, queue: str) -> None:
    """Drop every message waiting for ``queue``."""
    await conn.execute(delete(outbox).where(outbox.c.queue == queue))


async def backlog(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many messages wait, and when the oldest was written."""
    query = select(func.coalesce(func.sum(outbox.c.messages), 0), func.min(outbox.c.created_at))
    row = (await conn.execute(query)).one()
    return int(row[0]), row[1]
