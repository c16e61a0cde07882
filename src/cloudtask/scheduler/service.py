"""The scheduler service: while it leads, every ``SCHEDULER_POLL_SECONDS`` it dispatches due jobs
(highest priority first), fires due schedules and recovers abandoned or hung attempts, each step
one fenced transaction whose outbox messages are published after the commit, and hourly it
forgets firings recorded more than a day ago. It also relays outbox rows that were never
confirmed, whoever wrote them."""

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.cancellation import cancel_and_wait
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.queries import schedules as schedules_q
from cloudtask.errors import DatabaseUnavailable
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import SchedulerMetrics
from cloudtask.observability.sampler import StateSampler
from cloudtask.outbox import OutboxPublisher
from cloudtask.scheduler import firing, recovery
from cloudtask.scheduler.leadership import Leadership
from cloudtask.settings import Settings

log = logging.getLogger(__name__)
DISPATCH_BATCH = 500
RECOVERY_EVERY = 2.0
# A firing's row makes it create its job once however many schedulers try, in the moment they
# do: the schedule then moves past that time in the same transaction, and nothing fires it again.
# A day's rows are kept (far more than the clocks of two schedulers could differ by); the rows
# recorded before are deleted hourly, a batch per transaction (a first run may find months).
FIRINGS_KEPT = timedelta(days=1)
FORGET_FIRINGS_EVERY = 3600.0
FORGET_BATCH = 10_000

Step = Callable[[AsyncConnection], Awaitable[list[outbox_q.OutboxRow]]]


class SchedulerService:
    def __init__(
        self,
        settings: Settings,
        *,
        db: AsyncEngine,
        broker: Broker,
        kv: KV,
        metrics: SchedulerMetrics | None = None,
        holder: str | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._broker = broker
        self._kv = kv
        self.metrics = metrics or SchedulerMetrics()
        holder = holder or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.leadership = Leadership(kv, db, holder, settings.scheduler_lease_seconds)
        self.outbox = OutboxPublisher(
            db,
            broker,
            relay_after=settings.outbox_relay_after_seconds,
            on_published=self.metrics.outbox_published.inc,
        )
        self.sampler = StateSampler(self.metrics, db, broker)
        self._loop_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._outbox_tasks: list[asyncio.Task[None]] = []
        self._last_recovery = 0.0
        self._fired_a_full_batch = False
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler-loop")
        self._background = [
            asyncio.create_task(self.leadership.run(), name="scheduler-leadership"),
            asyncio.create_task(self.sampler.run(), name="scheduler-sampler"),
            asyncio.create_task(self._keep_forgetting_firings(), name="scheduler-firings"),
        ]
        self._outbox_tasks = [
            asyncio.create_task(self.outbox.run(), name="scheduler-outbox"),
            asyncio.create_task(self.outbox.run_relay(), name="scheduler-relay"),
        ]
        log.info("scheduler started", extra={"action": "scheduler.started"})

    async def stop(self, grace: float = 0) -> None:
        del grace  # a round of work is short: the loop finishes it
        self._stopping.set()
        self.leadership.changed.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await cancel_and_wait(self._background)
        await self.outbox.drain()
        self.outbox.stop()
        await asyncio.gather(*self._outbox_tasks, return_exceptions=True)
        await self.leadership.release()
        self.metrics.leader.set(0)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            busy = False
            self.metrics.leader.set(1 if self.leadership.acting else 0)
            if self.leadership.acting:
                try:
                    busy = await self.tick()
                except DatabaseUnavailable as exc:
                    log.warning("scheduler cannot reach the database: %s", exc)
                except Exception:
                    # Whatever went wrong in this round, the next one may go right: a scheduler
                    # whose loop ended would stop every delayed job, retry and schedule.
                    log.exception("scheduler round failed", extra={"action": "scheduler.failed"})
            if not busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.scheduler_poll_seconds):
                        await self.leadership.changed.wait()
                self.leadership.changed.clear()

    async def tick(self) -> bool:
        """One round of work; returns whether a full batch suggests more is waiting."""
        self._fired_a_full_batch = False
        dispatched = await self._fenced(self._dispatch)
        await self._fenced(self._fire)
        if time.monotonic() - self._last_recovery >= RECOVERY_EVERY:
            self._last_recovery = time.monotonic()
            await self._recover()
        # Firings too: a round waiting the poll interval after each 100 schedules fired 3,000
        # due together over 21 s, and a backlog longer than a schedule's period lost firings
        # (a late schedule fires once, for its latest time).
        return dispatched >= DISPATCH_BATCH or self._fired_a_full_batch

    async def _fenced(self, step: Step) -> int:
        """Run ``step`` if this instance still leads; returns how many messages it wrote."""
        async with session.transaction(self._db) as conn:
            if not await self.leadership.fenced(conn):
                return 0
            rows = await step(conn)
        self.outbox.submit(rows)
        return outbox_q.message_count(rows)

    async def _dispatch(self, conn: AsyncConnection) -> list[outbox_q.OutboxRow]:
        now = utcnow()
        due, rows = await dispatch_q.dispatch_due(conn, now=now, limit=DISPATCH_BATCH)
        for job in due:
            self.metrics.dispatched.labels(self.metrics.job_type(job.type)).inc()
            self.metrics.dispatch_lag.observe(max((now - job.run_at).total_seconds(), 0.0))
        return rows

    async def _fire(self, conn: AsyncConnection) -> list[outbox_q.OutboxRow]:
        result = await firing.fire_due(conn, now=utcnow())
        self.metrics.schedules_fired.inc(result.fired)
        self._fired_a_full_batch = result.claimed >= firing.FIRE_BATCH
        return result.rows

    async def _keep_forgetting_firings(self) -> None:
        """While leading, forget old firings every ``FORGET_FIRINGS_EVERY`` seconds, beside the
        rounds of work rather than in them."""
        last = -math.inf  # the first pass at once
        while not self._stopping.is_set():
            if self.leadership.acting and time.monotonic() - last >= FORGET_FIRINGS_EVERY:
                last = time.monotonic()
                try:
                    await self._forget_firings()
                except DatabaseUnavailable as exc:
                    log.warning("could not forget old firings: %s", exc)
                except Exception:
                    log.exception("forgetting old firings failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.scheduler_poll_seconds):
                    await self._stopping.wait()

    async def _forget_firings(self) -> None:
        # Not fenced: any scheduler may delete what no one needs. A batch per transaction, so
        # that each ends well within the statement timeout and holds few locks.
        before, forgotten = utcnow() - FIRINGS_KEPT, 0
        while not self._stopping.is_set() and self.leadership.acting:
            async with session.transaction(self._db) as conn:
                deleted = await schedules_q.forget_firings(conn, before=before, limit=FORGET_BATCH)
            forgotten += deleted
            if deleted < FORGET_BATCH:
                break
        if forgotten:
            log.info(
                "old firings forgotten",
                extra={"action": "scheduler.firings_forgotten", "count": forgotten},
            )

    async def _recover(self) -> None:
        """Judge every RUNNING attempt, a batch at a time: a dead worker's are found however
        many older ones live workers still run."""
        now = utcnow()
        past = None
        while True:
            async with session.reading(self._db) as conn:
                running = await recovery.find_candidates(conn, self._settings, now, past)
            if not running or not await self._judge(running, now):
                return
            if len(running) < recovery.BATCH:
                return
            past = running[-1]

    async def _judge(self, running: list[dispatch_q.Attempt], now: datetime) -> bool:
        """Recover the lost and hung among ``running``; False if judging must wait (reports
        are queued)."""
        lost = set()
        if self.leadership.store_steady_for(self._settings.worker_lease_seconds):
            lost = await recovery.lost_among(
                self._kv, running, self._settings, now, instance=self.leadership.store_instance
            )
        hung = [job for job in running if recovery.is_hung(job, self._settings, now)]
        if not lost and not hung:
            return True
        if await recovery.reports_waiting(self._broker):
            # Behind a backlog of reports, a RUNNING job whose lease ran out has most likely
            # finished, its report still queued: handing it out again would run it twice, and
            # add to the load that made the backlog. Judged again once the backlog is gone.
            log.info(
                "recovery waits for queued reports",
                extra={"action": "scheduler.recovery_deferred", "lost": len(lost)},
            )
            return False

        if not await recovery.mark_lost(self._kv, lost):
            # Unmarked, a lost attempt handed out again could be taken for a copy by a worker
            # that still renews its lease: judged again next time, once the marks are written.
            lost = set()

        async def step(conn: AsyncConnection) -> list[outbox_q.OutboxRow]:
            done = await recovery.recover(conn, self._settings, running, lost, now=now)
            for reason in ("lost", "hung", "cancelled", "gave_up"):
                self.metrics.recovered.labels(reason).inc(getattr(done, reason))
            if done.lost or done.hung or done.cancelled or done.gave_up:
                log.warning(
                    "attempts recovered",
                    extra={"action": "scheduler.recovered", "lost": done.lost, "hung": done.hung},
                )
            return done.rows

        await self._fenced(step)
        return True
