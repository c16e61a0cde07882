"""Group commit: single-job submissions that arrive together are written together.

Under load, many requests each submit one job at about the same moment. Written one by one, each
costs a statement, a commit (a WAL flush) and a connection for the round trip. Here a job waits
only while a write is already in flight; the jobs that gathered meanwhile go out in the next write,
in one statement (``jobs_q.submit``), and every request is answered once that commit is done, so a
201 still means the job is stored. Alone, a job is written at once: nothing waits for company.
"""

import asyncio
from collections import deque
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.errors import UnknownUser
from cloudtask.outbox import OutboxPublisher

# Writes in flight at once: with two, one group gathers while the other commits, so the database
# is kept busy without a queue of small writes each holding a pooled connection.
WRITERS = 2
MAX_GROUP = 1000


class GroupCommit:
    def __init__(
        self,
        engine: AsyncEngine,
        outbox: OutboxPublisher,
        *,
        writers: int = WRITERS,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._writers = writers
        self._max_group = max_group
        self._waiting: deque[tuple[jobs_q.NewJob, asyncio.Future[None]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.writes = 0
        """Statements written so far; fewer than the jobs stored when they were grouped."""

    async def store(self, job: jobs_q.NewJob) -> None:
        """Return once ``job`` and its outbox message are committed (its message then queued for
        the publisher); raise what its write raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, done))
        if self._running < self._writers:
            self._running += 1
            # A task of its own, so that a request given up half-way cannot strand the others.
            task = asyncio.create_task(self._write_while_waiting(), name="group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await done

    async def _write_while_waiting(self) -> None:
        try:
            while self._waiting:
                count = min(len(self._waiting), self._max_group)
                group = [self._waiting.popleft() for _ in range(count)]
                await self._write(group)
        finally:
            self._running -= 1

    async def _write(self, group: Sequence[tuple[jobs_q.NewJob, asyncio.Future[None]]]) -> None:
        self.writes += 1
        try:
            async with session.autocommit(self._engine) as conn:
                rows = await jobs_q.submit(conn, [job for job, _ in group])
        except UnknownUser as exc:
            if len(group) == 1:
                _settle(group, exc)
                return
            # One user of the group no longer exists, and the statement took none of the jobs:
            # each goes again on its own, so only that user's requests fail.
            for item in group:
                await self._write([item])
            return
        except asyncio.CancelledError:
            _settle(group, asyncio.CancelledError())
            raise
        except Exception as exc:  # every waiting request answers with it
            _settle(group, exc)
            return
        self._outbox.submit(rows)
        _settle(group, None)

    async def close(self) -> None:
        """Wait for the writes in flight (the app's shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(
    group: Sequence[tuple[jobs_q.NewJob, asyncio.Future[None]]], error: BaseException | None
) -> None:
    for _, done in group:
        if done.done():  # its request was cancelled meanwhile
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
