"""``cloudtask requeue``: queue again the PENDING jobs whose messages RabbitMQ no longer holds.

PostgreSQL is the record; a PENDING job's message is in ``jobs.created`` or held by a worker.
An operator who purges or deletes that queue (or loses RabbitMQ's disk) leaves the jobs PENDING
with nothing to run them, and no service can tell a lost message from one waiting behind a long
queue. This command does, on the operator's word: each PENDING job queued before ``older_than``
seconds ago gets a new message, through the outbox, which the api and the scheduler relay.

A job whose message was not lost after all may then run twice (at least once, as ever); one
whose first message a worker still holds is skipped by the worker that gets the copy.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import CloudTaskError


class OutboxNotEmpty(CloudTaskError):
    """Messages still wait in the outbox: their jobs are not lost, only not yet published."""


@dataclass(frozen=True)
class Requeued:
    jobs: int
    before: datetime


async def requeue_pending(engine: AsyncEngine, older_than: float) -> Requeued:
    now = utcnow()
    before = now - timedelta(seconds=older_than)
    async with session.transaction(engine) as conn:
        waiting, _ = await outbox_q.backlog(conn)
        if waiting:
            raise OutboxNotEmpty(
                f"the outbox still holds {waiting} message(s) to publish (RabbitMQ away, or no "
                "api or scheduler running to relay them): their jobs are not lost; "
                "try again once it is empty"
            )
        stale = await dispatch_q.pending(conn, before=before)
        await outbox_q.add(conn, [job.message(now) for job in stale], now=now)
    return Requeued(len(stale), before)
