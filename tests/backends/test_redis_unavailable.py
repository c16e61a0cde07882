"""Redis only: a store that cannot be reached raises CloudTask's error and reports itself down."""

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

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


async def _close_connections_to(redis_url: str) -> int:
    """What a Redis restart does to a client's pooled connections: the server closes them.
    Only this database's (this test process's) connections, so other tests are unaffected."""
    db = int(redis_url.rsplit("/", 1)[1])
    admin = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/0")
    try:
        own = await admin.client_id()
        victims = [
            int(client["id"])
            for client in await admin.client_list()
            if int(client["db"]) == db and int(client["id"]) != own
        ]
        for victim in victims:
            await admin.client_kill_filter(_id=victim)
        return len(victims)
    finally:
        await admin.aclose()


async def test_connections_the_server_closed_are_replaced_without_failing_a_command(
    redis_url: str,
) -> None:
    kv = RedisKV(redis_url)
    await kv.start()
    try:
        keys = [f"restart-{n}" for n in range(6)]
        assert await asyncio.gather(*(kv.incr(key, ttl=60) for key in keys)) == [1] * 6
        assert await _close_connections_to(redis_url) >= 2
        assert await asyncio.gather(*(kv.incr(key, ttl=60) for key in keys)) == [2] * 6
        await kv.delete(*keys)
    finally:
        await kv.close()


async def test_a_redis_that_refuses_info_does_not_say_its_run_and_still_serves(
    redis_url: str,
) -> None:
    # As a managed Redis with INFO renamed or not allowed: a user whose ACL leaves it out.
    admin = aioredis.Redis.from_url(redis_url)
    user = f"ct-test-no-info-{uuid4().hex[:8]}"
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-info"]
    )
    kv = RedisKV(redis_url.replace("redis://", f"redis://{user}@", 1))
    try:
        assert await kv.instance() is None
        await kv.set("key", b"value")
        assert await kv.get("key") == b"value"
    finally:
        await kv.close()
        await admin.acl_deluser(user)
        await admin.aclose()
