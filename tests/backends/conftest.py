"""The broker and the key-value store, each on its in-process twin and on the real server.

URL fixtures are synchronous because preparing RabbitMQ and Redis runs outside the test's loop.
"""

import contextlib
from collections.abc import AsyncIterator

import pytest

from cloudtask.broker.base import Broker
from cloudtask.broker.memory import MemoryBroker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import ALL_QUEUES
from cloudtask.kv.base import KV
from cloudtask.kv.memory import MemoryKV
from cloudtask.kv.redis import RedisKV
from tests.conftest import BACKEND_KINDS


@pytest.fixture(params=BACKEND_KINDS)
def broker_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("rabbit_url")
    return url


@contextlib.asynccontextmanager
async def started_broker(url: str | None) -> AsyncIterator[Broker]:
    """The in-process broker (``url`` None) or RabbitMQ's, connected, with empty queues."""
    broker: Broker = MemoryBroker() if url is None else RabbitMQBroker(url)
    await broker.start()
    if isinstance(broker, RabbitMQBroker):
        await broker.wait_connected(10)
        for queue in ALL_QUEUES:
            await broker.purge(queue)
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def broker(broker_url: str | None) -> AsyncIterator[Broker]:
    async with started_broker(broker_url) as broker:
        yield broker


@pytest.fixture(params=BACKEND_KINDS)
def kv_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def kv(kv_url: str | None) -> AsyncIterator[KV]:
    kv: KV = MemoryKV() if kv_url is None else RedisKV(kv_url)
    await kv.start()
    try:
        yield kv
    finally:
        await kv.close()
