"""Reading RabbitMQ queues from end-to-end tests (synchronous helpers)."""

import asyncio
import json
import time
from collections import Counter
from typing import Any

import aio_pika


def read_messages(url: str, queue: str, *, wanted: set[str], timeout: float = 30) -> Counter[str]:
    """Take messages off ``queue`` until every job id in ``wanted`` was seen (or time runs out);
    returns how often each job id was seen."""

    async def read() -> Counter[str]:
        seen: Counter[str] = Counter()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            amqp_queue = await channel.get_queue(queue, ensure=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not wanted <= set(seen):
                message = await amqp_queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                    continue
                body: dict[str, Any] = json.loads(message.body)
                seen[body["jobId"]] += 1
            # Whatever else is already there (duplicates) is counted too.
            while (message := await amqp_queue.get(no_ack=True, fail=False)) is not None:
                seen[json.loads(message.body)["jobId"]] += 1
        finally:
            await connection.close()
        return seen

    return asyncio.run(read())
