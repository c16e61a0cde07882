"""Redis only: a store that cannot be reached raises CloudTask's error and reports itself down."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from cloudtask.errors import KVUnavailable
from cloudtask.kv.redis import RedisKV

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
async def unreachable() -> AsyncIterator[RedisKV]:
    kv = RedisKV(CLOSED_PORT_URL, timeout=1)
    await kv.start()
    try:
        yield kv
    finally:
        await kv.close()


async def test_reading_an_unreachable_store_raises_kv_unavailable(unreachable: RedisKV) -> None:
    async with asyncio.timeout(5):
        with pytest.raises(KVUnavailable):
            await unreachable.get("key")


async def test_writing_an_unreachable_store_raises_kv_unavailable(unreachable: RedisKV) -> None:
    async with asyncio.timeout(5):
        with pytest.raises(KVUnavailable):
            await unreachable.set("key", b"value", ttl=1)
        with pytest.raises(KVUnavailable):
            await unreachable.acquire_lease("leader", "alice", 1)


async def test_ping_reports_an_unreachable_store_as_down(unreachable: RedisKV) -> None:
    async with asyncio.timeout(5):
        assert await unreachable.ping() is False
