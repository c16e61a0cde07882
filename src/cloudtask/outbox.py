"""The transactional outbox: the one place that knows both the database and the broker.

A change and the messages announcing it are committed together (see ``db.queries.jobs.submit``).
After the commit, :class:`OutboxPublisher` publishes the rows at once, in batches with pipelined
confirms, and deletes the confirmed ones in one statement per batch. Whatever it could not publish
(the broker down, the process killed) stays in the table, and :meth:`OutboxPublisher.relay` sends it
again once it is older than ``relay_after`` seconds. Consumers are idempotent, so the rare message
published twice changes nothing twice.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker, OutgoingMessage
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import BrokerUnavailable, DatabaseUnavailable

log = logging.getLogger(__name__)

BATCH = 500
DEFERRED_LOG_EVERY = 10.0  # seconds between warnings about messages left for the relay


def _outgoing(rows: Sequence[outbox_q.OutboxRow]) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(row.queue, body.encode(), row.priority)
        for row in rows
        for body in row.bodies
    ]


class OutboxPublisher:
    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        *,
        relay_after: float = 5.0,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._relay_after = relay_after
        self._on_published = on_published or (lambda _count: None)
        self._pending: deque[outbox_q.OutboxRow] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._deferred_count = 0
        self._deferred_logged_at = -math.inf

    def submit(self, rows: Sequence[outbox_q.OutboxRow]) -> None:
        """Queue committed rows for publishing; returns at once."""
        if rows:
            self._pending.extend(rows)
            self._idle.clear()
            self._wake.set()

    def stop(self) -> None:
        """Ask :meth:`run` and :meth:`run_relay` to return after their current step."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish submitted rows until :meth:`stop`."""
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft()]
                messages = len(batch[0].bodies)
                while self._pending and messages + len(self._pending[0].bodies) <= BATCH:
                    batch.append(self._pending.popleft())
                    messages += len(batch[-1].bodies)
                try:
                    await self._publish(batch)
                except Exception:  # the relay has the rows; this loop must go on
                    log.exception("outbox publishing failed; the relay will send these rows")
            self._idle.set()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far was published or handed to the relay."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def _publish(self, rows: Sequence[outbox_q.OutboxRow]) -> None:
        # The rows are deleted, uncommitted, before they are published: they stay locked, so a
        # relay (which skips locked rows) never sends them a second time, and a failed publish
        # rolls the delete back. Rows a relay already holds or sent are left to it.
        published = 0
        try:
            async with (
                session.transaction(self._engine) as conn,
                outbox_q.taking(conn, [row.id for row in rows]) as mine,
            ):
                outgoing = _outgoing([row for row in rows if row.id in mine])
                await self._broker.publish_many(outgoing)
                published = len(outgoing)
        except BrokerUnavailable as exc:
            self._deferred(outbox_q.message_count(rows), str(exc))
        except DatabaseUnavailable as exc:
            # Perhaps published but not removed: the relay publishes them again, and consumers
            # are idempotent, so this costs a duplicate and loses nothing.
            log.warning("could not settle published outbox rows: %s", exc)
        if published:
            self._on_published(published)

    def _deferred(self, count: int, reason: str) -> None:
        # While RabbitMQ is down every submission lands here: one line per DEFERRED_LOG_EVERY
        # seconds with the messages deferred since the last one, not a line per request.
        self._deferred_count += count
        now = time.monotonic()
        if now - self._deferred_logged_at < DEFERRED_LOG_EVERY:
            return
        log.warning(
            "outbox messages left for the relay",
            extra={"action": "outbox.deferred", "count": self._deferred_count, "reason": reason},
        )
        self._deferred_count, self._deferred_logged_at = 0, now

    async def relay(self) -> int:
        """Publish messages that were not confirmed within ``relay_after`` seconds. Returns how
        many (at most BATCH, or one row's)."""
        older_than = utcnow() - timedelta(seconds=self._relay_after)
        async with session.transaction(self._engine) as conn:
            rows = await outbox_q.claim_stale(conn, older_than=older_than, limit=BATCH)
            if not rows:
                return 0
            outgoing = _outgoing(rows)
            await self._broker.publish_many(outgoing)
            await outbox_q.remove(conn, [row.id for row in rows])
        self._on_published(len(outgoing))
        log.info(
            "outbox messages relayed", extra={"action": "outbox.relayed", "count": len(outgoing)}
        )
        return len(outgoing)

    async def run_relay(self, interval: float = 1.0) -> None:
        """Relay stale rows every ``interval`` seconds until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                while await self.relay():  # until none is left
                    pass
            except BrokerUnavailable:
                pass
            except DatabaseUnavailable as exc:
                log.warning("outbox relay could not reach the database: %s", exc)
            except Exception:  # relaying must go on whatever one round met
                log.exception("outbox relay failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
