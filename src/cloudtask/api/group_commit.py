"""Group commit: single-job submissions that arrive together are written together.

Under load, many requests each submit one job at about the same moment. Written one by one, each
costs a statement, a commit (a WAL flush) and a pooled connection for the round trip. Here a job
waits only while a write is already in flight; the jobs that gathered meanwhile go out in the next
write, in one statement (``jobs_q.submit``), and every request is answered once that commit is
done, so a 201 still means the job is stored. Alone, a job is written at once.
"""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.batching import Batcher
from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.errors import DatabaseUnavailable
from cloudtask.outbox import OutboxPublisher

MAX_GROUP = 1000


class GroupCommit:
    def __init__(self, engine: AsyncEngine, outbox: OutboxPublisher) -> None:
        self._engine = engine
        self._outbox = outbox
        # A group that fails for one job's sake (a user that no longer exists: UnknownUser) is
        # written again job by job, so only that user's requests fail.
        self._batcher: Batcher[jobs_q.NewJob] = Batcher(
            self.write,
            max_size=MAX_GROUP,
            shared_failures=(DatabaseUnavailable,),
            name="group-commit",
        )

    @property
    def writes(self) -> int:
        """Statements written so far; fewer than the jobs stored when they were grouped."""
        return self._batcher.writes

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def store(self, job: jobs_q.NewJob) -> None:
        """Return once ``job`` and its outbox message are committed (the message then queued for
        the publisher); raise what its write raised."""
        await self._batcher.add(job)

    async def write(self, new_jobs: Sequence[jobs_q.NewJob]) -> None:
        """Commit ``new_jobs`` and their outbox messages now, in one statement on PostgreSQL (a
        transaction on SQLite), then queue the messages for the publisher."""
        async with session.autocommit(self._engine) as conn:
            rows = await jobs_q.submit(conn, new_jobs)
        self._outbox.submit(rows)
