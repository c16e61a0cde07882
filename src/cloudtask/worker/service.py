"""The worker service: consumes ``jobs.created`` and runs the pipeline on each delivery.

Concurrency is ``WORKER_CONCURRENCY`` slots, held while an attempt runs and given to the waiting
deliveries highest priority first (``slots.py``). The prefetch (``WORKER_PREFETCH``, by default
twice the concurrency) leaves room beside the running jobs for the finished ones whose reports
wait for the broker's confirm, and for the next deliveries: a short job spends as long waiting
for its report as it runs. On stop it takes no new deliveries, gives running jobs ``grace``
seconds to finish, then stops the rest and puts them back on ``jobs.created``; deliveries it held
but had not started return to the queue.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import Any

from cloudtask.broker.base import Broker, Consumer, Delivery
from cloudtask.broker.grouping import GroupedPublisher
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.signals import handler_key
from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import WorkerMetrics
from cloudtask.settings import Settings
from cloudtask.worker.leases import RunningAttempts
from cloudtask.worker.pipeline import Pipeline, PipelineDeps
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.slots import PrioritySlots
from cloudtask.worker.threads import HandlerThreads

log = logging.getLogger(__name__)
# Under load the reports of jobs ending within 2 ms of each other share a publish (and the
# results-processor's acks, fewer and larger); with the same linger for leases (leases.py), about
# a fifth of the stack's CPU per job at 1,000 jobs/s. A job ending alone is reported at once.
REPORT_LINGER = 0.002


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class WorkerService:
    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker,
        kv: KV,
        handlers: HandlerRegistry,
        metrics: WorkerMetrics | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = concurrency or settings.worker_concurrency
        self.prefetch = settings.worker_prefetch or 2 * self.concurrency
        self.metrics = metrics or WorkerMetrics()
        self._broker = broker
        self._kv = kv
        self._handlers = handlers
        self._executor = HandlerThreads(keep_idle=self.concurrency, name="cloudtask-job")
        self._running = RunningAttempts(kv, self.worker_id, settings.worker_lease_seconds)
        self._reports = GroupedPublisher(broker, name="worker-reports", linger=REPORT_LINGER)
        deps = PipelineDeps(
            broker=broker,
            reports=self._reports,
            kv=kv,
            handlers=handlers,
            running=self._running,
            executor=self._executor,
            metrics=self.metrics,
            worker_id=self.worker_id,
            max_deliveries=settings.max_deliveries,
        )
        self._active: set[asyncio.Task[Any]] = set()
        self.pipeline = Pipeline(deps, PrioritySlots(self.concurrency))
        self._consumer: Consumer | None = None
        self._advertising: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    async def start(self) -> None:
        self._reports.start()
        await self._running.start()
        await self._advertise_handlers()  # before the first delivery: seen by the other workers
        self._advertising = asyncio.create_task(self._keep_advertising(), name="handler-types")
        self._consumer = await self._broker.consume(
            JOBS_CREATED,
            self._handle,
            prefetch=self.prefetch,
            on_lost=self.pipeline.cuts.connection_lost,
        )
        log.info(
            "worker started",
            extra={
                "action": "worker.started",
                "workerId": self.worker_id,
                "concurrency": self.concurrency,
                "prefetch": self.prefetch,
            },
        )

    async def _handle(self, delivery: Delivery) -> None:
        # A task of its own: the AMQP client cancels a consumer's tasks when their channel
        # closes (a lost connection), and a job that has started must still run to its end and
        # report (publishing waits for the broker to come back). One not yet started finds its
        # delivery gone when it acknowledges, and leaves it to the copy RabbitMQ requeued.
        task = asyncio.create_task(self.pipeline(delivery))
        self._active.add(task)
        task.add_done_callback(self._active.discard)
        await asyncio.shield(task)

    async def _advertise_handlers(self) -> None:
        """Say in the key-value store which job types this worker has handlers for, for as long
        as its leases last: a worker without a type's handler gives its jobs back to the queue
        for this one rather than failing them (a rolling deploy adding a handler), while a type
        that no running worker knows fails at once."""
        worker = self.worker_id.encode()
        items = {handler_key(handler.type): worker for handler in self._handlers}
        try:
            await self._kv.set_many(items, ttl=self._running.lease_seconds)
        except KVUnavailable as exc:
            log.warning("could not advertise the worker's job types: %s", exc)

    async def _keep_advertising(self) -> None:
        while True:
            await asyncio.sleep(self._running.lease_seconds / 3)
            await self._advertise_handlers()

    @property
    def busy(self) -> int:
        """Deliveries being handled now (running or waiting for a slot)."""
        return len(self._active)

    def hurry(self) -> None:
        """Cut the grace of a stop short (an operator's second Ctrl-C): running jobs go back to
        the queue at once."""
        if not self._hurry.is_set():
            log.warning("stopping now: running jobs go back to the queue")
        self._hurry.set()

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, let running ones finish within ``grace`` seconds (or until
        :meth:`hurry`), requeue the rest."""
        self.pipeline.stopping.set()
        if self._advertising is not None:  # its keys expire with the leases' TTL
            self._advertising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advertising
        if self._consumer is not None:
            await self._consumer.stop_receiving()
        if self._active and not self._hurry.is_set():
            finished = asyncio.ensure_future(asyncio.wait(set(self._active)))
            hurried = asyncio.ensure_future(self._hurry.wait())
            try:
                await asyncio.wait(
                    {finished, hurried}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiting in (finished, hurried):
                    waiting.cancel()
        if self._active:
            self.pipeline.requeue_running()
            await asyncio.wait(set(self._active), timeout=10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pipeline.returns_done(), timeout=10)
        if self._consumer is not None:
            await self._consumer.cancel()
        await self._reports.stop()  # after the jobs: their reports go out through it
        await self._running.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"action": "worker.stopped", "workerId": self.worker_id})
