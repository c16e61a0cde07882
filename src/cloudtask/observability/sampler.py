"""Sampling the state the services share: queue depths and consumers, and the outbox backlog.

These are read from RabbitMQ and the database every few seconds (a Prometheus scrape must not wait
on them) by the scheduler, which every deployment runs.
"""

import asyncio
import contextlib
import logging

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.contracts.queues import ALL_QUEUES
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import BrokerUnavailable, DatabaseUnavailable
from cloudtask.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class StateSampler:
    def __init__(
        self, metrics: ServiceMetrics, db: AsyncEngine, broker: Broker, interval: float = 5.0
    ) -> None:
        self._db = db
        self._broker = broker
        self._interval = interval
        registry = metrics.registry
        self.queue_messages = Gauge(
            "cloudtask_queue_messages",
            "Messages ready in each RabbitMQ queue.",
            ["queue"],
            registry=registry,
        )
        self.queue_consumers = Gauge(
            "cloudtask_queue_consumers",
            "Consumers of each RabbitMQ queue.",
            ["queue"],
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "cloudtask_outbox_backlog",
            "Outbox messages written but not yet confirmed by the broker.",
            registry=registry,
        )
        self.outbox_oldest = Gauge(
            "cloudtask_outbox_oldest_age_seconds",
            "Age of the oldest unconfirmed outbox message (0 when none waits).",
            registry=registry,
        )

    async def sample(self) -> None:
        with contextlib.suppress(BrokerUnavailable):
            for queue in ALL_QUEUES:
                stats = await self._broker.stats(queue)
                self.queue_messages.labels(queue).set(stats.messages)
                self.queue_consumers.labels(queue).set(stats.consumers)
        with contextlib.suppress(DatabaseUnavailable):
            async with session.reading(self._db) as conn:
                count, oldest = await outbox_q.backlog(conn)
            self.outbox_backlog.set(count)
            age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
            self.outbox_oldest.set(max(age, 0.0))

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a failed sample must not stop the sampling
                log.exception("could not sample queue and outbox state")
            await asyncio.sleep(self._interval)
