"""Moving a message nobody could handle to ``jobs.dead``, with why and where it came from.

It keeps what it can of the message's own headers (a peer's trace or correlation ids, for
whoever looks into it): short strings, integers and booleans, which go out as they came in (but
for a name longer than 128 bytes, which the AMQP client cuts).
Others are left out: a float (which AMQP's client writes back as a 4-byte float, changed), raw
bytes or a nested table (which it cannot write back at all), a long string (which, beside the
rest, could push the header frame past the broker's limit and close the connection). A message
whose move failed for one of its headers would come back and fail again, for ever.
"""

import asyncio
import contextlib
import logging
from typing import Any

from cloudtask.broker.base import Broker, Delivery
from cloudtask.contracts.queues import JOBS_DEAD
from cloudtask.errors import BrokerUnavailable

log = logging.getLogger(__name__)

KEPT_HEADERS = 32
KEPT_VALUE_BYTES = 1024
REASON_CHARS = 1000  # a driver's error can quote a whole statement
# A message put back because jobs.dead would not take it (the broker away, a full dead queue
# that refuses publishes) comes straight back: without a pause, a loop as fast as the broker.
PUT_BACK_AFTER = 1.0
_pause = asyncio.sleep  # its own name, for a test to stand in for this pause alone


def _kept(headers: Any) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, value in headers.items():
        if len(kept) == KEPT_HEADERS:
            break
        if (
            isinstance(value, bool)
            or (isinstance(value, int) and -(2**63) <= value < 2**63)
            or (
                isinstance(value, str) and len(value.encode("utf-8", "replace")) <= KEPT_VALUE_BYTES
            )
        ):
            kept[name] = value
    return kept


async def move(broker: Broker, delivery: Delivery, queue: str, reason: str) -> bool:
    """Move ``delivery`` to ``jobs.dead`` and acknowledge it; whether it was moved (if the
    broker did not take it, the delivery goes back to its queue, for later)."""
    try:
        await _publish(broker, delivery, queue, reason)
        await delivery.ack()
    except BrokerUnavailable:
        await _pause(PUT_BACK_AFTER)
        with contextlib.suppress(BrokerUnavailable):
            await delivery.reject(requeue=True)
        return False
    log.warning("message dead-lettered", extra={"action": "message.dead", "reason": reason})
    return True


async def _publish(broker: Broker, delivery: Delivery, queue: str, reason: str) -> None:
    why = {"x-death-reason": reason[:REASON_CHARS], "x-original-queue": queue}
    try:
        await broker.publish(
            JOBS_DEAD,
            delivery.body,
            priority=delivery.priority,
            headers=_kept(delivery.headers) | why,
        )
    except BrokerUnavailable:
        raise
    except Exception:  # a header the client could not write after all: moved without them
        log.warning("dead-lettering without the message's own headers", exc_info=True)
        await broker.publish(JOBS_DEAD, delivery.body, headers=why)
