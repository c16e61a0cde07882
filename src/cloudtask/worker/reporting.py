"""Publishing an attempt's messages and settling its delivery, with the broker away at times.

A report is retried while the broker is away (``until_published``): the job's status depends on
it. An acknowledgement or a rejection is not: a delivery whose channel went is handed out again
by RabbitMQ, which is what either would have led to.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cloudtask.broker.base import Delivery
from cloudtask.errors import BrokerUnavailable

log = logging.getLogger(__name__)

PUBLISH_LIMIT = 300.0


async def until_published(publish: Callable[[], Awaitable[None]]) -> bool:
    """Publish, retrying while the broker is away; give up after ``PUBLISH_LIMIT`` seconds.
    Returns whether it was. If not, an attempt that was announced (RUNNING) has its lease
    expire and the scheduler hands it out again; one that was not has its delivery rejected
    back to the queue."""
    limit = PUBLISH_LIMIT
    delay, deadline = 0.2, time.monotonic() + limit
    while True:
        try:
            await publish()
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                log.error("giving up publishing after %s s", limit)  # noqa: TRY400 - no traceback wanted
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
        else:
            return True


async def acknowledged(delivery: Delivery) -> bool:
    """Acknowledge the delivery; whether the broker could be told."""
    try:
        await delivery.ack()
    except BrokerUnavailable:
        return False
    return True


async def quietly(step: Awaitable[None]) -> None:
    """Settle a delivery, the broker away or not (its channel's end settles it as well)."""
    try:
        await step
    except BrokerUnavailable:
        return
