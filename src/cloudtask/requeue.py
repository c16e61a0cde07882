"""``cloudtask requeue``: queue again the PENDING jobs whose messages RabbitMQ no longer holds.

PostgreSQL is the record; a PENDING job's message is in ``jobs.created`` or held by a worker.
An operator who purges or deletes that queue (or loses RabbitMQ's disk) leaves the jobs PENDING
with nothing to run them, and no service can tell a lost message from one waiting behind a long
queue. This command does, on the operator's word: each job PENDING for at least ``older_than``
seconds gets a new message, through the outbox, which the api and the scheduler relay.

It refuses while a message could still stand for such a job: in the outbox (not yet
published), in ``jobs.created`` (waiting in the queue, or held by a worker: RabbitMQ counts
only the first, so the workers must be stopped), in ``jobs.started`` or ``jobs.completed`` (a
report the results-processor has not written, whose job still reads PENDING; one a running
results-processor holds is not counted either, and ``older_than`` is what keeps its job out, the
report written within milliseconds). Jobs are read and
queued a page at a time, so that a million of them (and their payloads) are never in memory at
once.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED, JOBS_STARTED
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import CloudTaskError

PAGE = 500  # jobs read and queued per transaction


class NotNow(CloudTaskError):
    """A message may still stand for a job that looks lost; the message says which and why."""


@dataclass(frozen=True)
class Requeued:
    jobs: int
    before: datetime


async def check_queues(broker: Broker) -> None:
    """Raise :class:`NotNow` while a queue holds messages that may stand for PENDING jobs."""
    why = {
        JOBS_CREATED: "waiting for a worker: their jobs are not lost",
        JOBS_STARTED: "reports not yet written, whose jobs may still read PENDING",
        JOBS_COMPLETED: "reports not yet written, whose jobs may still read PENDING",
    }
    stats = {queue: await broker.stats(queue) for queue in why}
    for queue, reason in why.items():
        if stats[queue].messages:
            raise NotNow(
                f"{queue} holds {stats[queue].messages} message(s), {reason}; "
                "try again once it is empty"
            )
    if consumers := stats[JOBS_CREATED].consumers:
        raise NotNow(
            f"{JOBS_CREATED} has {consumers} consumer(s): a worker holds messages RabbitMQ does "
            "not count (waiting for a slot), whose jobs are not lost; stop the workers first"
        )


async def requeue_pending(engine: AsyncEngine, older_than: float) -> Requeued:
    now = utcnow()
    before = now - timedelta(seconds=older_than)
    async with session.reading(engine) as conn:
        waiting, _ = await outbox_q.backlog(conn)
    if waiting:
        raise NotNow(
            f"the outbox still holds {waiting} message(s) to publish (RabbitMQ away, or no api "
            "or scheduler running to relay them): their jobs are not lost; "
            "try again once it is empty"
        )
    count, after = 0, 0
    while True:
        async with session.transaction(engine) as conn:
            page, after = await dispatch_q.pending_page(
                conn, before=before, after=after, limit=PAGE
            )
            await outbox_q.add(conn, [job.message(now) for job in page], now=now)
        count += len(page)
        if len(page) < PAGE:
            return Requeued(count, before)
