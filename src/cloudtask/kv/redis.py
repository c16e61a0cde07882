"""The Redis key-value store (redis-py asyncio).

Leases are a Lua script, so taking, renewing and fencing are one atomic step. Pub/sub runs on its
own connection with a listener that reconnects when Redis comes back.
"""

import asyncio
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV, MessageCallback, Subscription

log = logging.getLogger(__name__)

# KEYS[1] lease key, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl in ms.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]))
end
if holder then return nil end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_DECR = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return nil
"""
_INCR = """
local value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return value
"""
# A worker's leases, written and their cancel flags read in one command: as a pipeline of a SET
# per lease, redis-py spent a tenth of the worker's CPU packing commands and parsing replies.
# ARGV[1] is the TTL in milliseconds, ARGV[2] the value a claim may replace (besides its own),
# ARGV[3] the number of claims, the first KEYS; ARGV[i + 3] is the value of KEYS[i], and the KEYS
# beyond the values are read back. Returns, per claim, the value that kept it from being written
# (nil where it was), then the values read (nil where absent). Plain writes are claims-free calls.
_CLAIM_MANY_AND_GET = """
local claims = tonumber(ARGV[3])
local written = #ARGV - 3
local result = {}
for i = 1, written do
  local held = false
  if i <= claims then
    held = redis.call('GET', KEYS[i])
    if held == ARGV[2] or held == ARGV[i + 3] then held = false end
    result[i] = held
  end
  if not held then redis.call('SET', KEYS[i], ARGV[i + 3], 'PX', ARGV[1]) end
end
for i = written + 1, #KEYS do
  result[claims + i - written] = redis.call('GET', KEYS[i])
end
return result
"""


CLOSE_WAIT = 5.0
"""Seconds a closing subscription waits for its listener to end."""


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class _RedisSubscription(Subscription):
    def __init__(self, client: aioredis.Redis, channel: str, callback: MessageCallback) -> None:
        self._client = client
        self._channel = channel
        self._callback = callback
        self._ready = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._listen())

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _listen(self) -> None:
        while not self._closing:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._ready.set()
                    async for message in pubsub.listen():
                        if self._closing:
                            return
                        await self._deliver(message)
            except (RedisError, OSError) as exc:
                if self._closing:
                    return  # the cancel, which redis-py may raise as a ConnectionError
                log.warning("Redis subscription to %s lost (%r); resubscribing", self._channel, exc)
                await asyncio.sleep(1)

    async def _deliver(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            outcome = self._callback(message["data"])
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("subscriber to %s failed", self._channel)

    async def close(self) -> None:
        self._closing = True
        self._task.cancel()
        # Waited for a moment at most: a stop must not hang on the client library's cleanup of
        # a subscription (the listener's cancel, taken for a lost connection, once looped on).
        await asyncio.wait([self._task], timeout=CLOSE_WAIT)
        if not self._task.done():
            log.warning("Redis subscription to %s did not close in time", self._channel)


def _retry_once() -> Retry:
    """A command whose pooled connection turns out closed (Redis restarted since it was last
    used) is sent again, once, on a new connection, instead of failing: without it, every
    connection of the pool failed one command after a restart, with Redis up again. A client
    made by ``from_url`` retries nothing unless told (its connections take no default)."""
    backoff = ExponentialBackoff(cap=0.2, base=0.02)
    return Retry(backoff, retries=1, supported_errors=(RedisConnectionError,))


class RedisKV(KV):
    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry=_retry_once(),
        )
        self._subscriber_client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, health_check_interval=30, retry=_retry_once()
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._incr = self._client.register_script(_INCR)
        self._decr = self._client.register_script(_DECR)
        self._claim_many_and_get = self._client.register_script(_CLAIM_MANY_AND_GET)
        self._subscriptions: list[_RedisSubscription] = []

    async def start(self) -> None:
        """Nothing to do: redis-py connects on first use, and reconnects after a failure."""

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions.clear()
        await self._client.aclose()
        await self._subscriber_client.aclose()

    async def _call(self, operation: Any) -> Any:
        try:
            return await operation
        except (RedisError, OSError) as exc:
            raise KVUnavailable(f"Redis: {exc!r}") from None

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._client.get(key))
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._call(self._client.mget(list(keys)))
        return values

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        done = await self._call(
            self._client.set(
                key, value, px=_ms(ttl) if ttl is not None else None, nx=only_if_absent
            )
        )
        return bool(done)

    async def set_many(self, items: dict[str, bytes], *, ttl: float) -> None:
        if items:
            await self.claim_many_and_get({}, ttl=ttl, free=b"", forced=items, get_keys=())

    async def claim_many_and_get(
        self,
        claims: dict[str, bytes],
        *,
        ttl: float,
        free: bytes,
        forced: dict[str, bytes],
        get_keys: Sequence[str],
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        if not claims and not forced and not get_keys:
            return [], []
        values = list(
            await self._call(
                self._claim_many_and_get(
                    keys=[*claims, *forced, *get_keys],
                    args=[_ms(ttl), free, len(claims), *claims.values(), *forced.values()],
                )
            )
        )
        return values[: len(claims)], values[len(claims) :]

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call(self._client.delete(*keys)))

    async def incr(self, key: str, *, ttl: float) -> int:
        return int(await self._call(self._incr(keys=[key], args=[_ms(ttl)])))

    async def decr(self, key: str) -> int | None:
        value = await self._call(self._decr(keys=[key]))
        return None if value is None else int(value)

    async def ttl(self, key: str) -> float | None:
        millis = int(await self._call(self._client.pttl(key)))
        return None if millis < 0 else millis / 1000

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> int | None:
        token = await self._call(
            self._acquire(keys=[f"lease:{name}", f"lease:{name}:fence"], args=[owner, _ms(ttl)])
        )
        return None if token is None else int(token)

    async def release_lease(self, name: str, owner: str) -> None:
        await self._call(self._release(keys=[f"lease:{name}"], args=[owner]))

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call(self._client.publish(channel, message))

    async def subscribe(self, channel: str, callback: MessageCallback) -> Subscription:
        subscription = _RedisSubscription(self._subscriber_client, channel, callback)
        self._subscriptions.append(subscription)
        try:
            async with asyncio.timeout(5):
                await subscription.wait_ready()
        except TimeoutError:
            log.warning("Redis subscription to %s not ready yet; it keeps trying", channel)
        return subscription

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def instance(self) -> str | None:
        try:
            info = await self._client.info("server")
        except ResponseError:
            return None  # INFO refused (renamed, or not allowed to this user)
        except (RedisError, OSError) as exc:
            raise KVUnavailable(f"Redis: {exc!r}") from None
        run_id = info.get("run_id")  # new at every start of the server
        return None if run_id is None else str(run_id)
