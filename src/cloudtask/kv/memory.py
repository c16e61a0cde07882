"""An in-process key-value store for ``cloudtask dev`` and tests, behaving like the Redis one."""

import asyncio
import base64
import inspect
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from cloudtask.kv.base import KV, MessageCallback, Subscription

log = logging.getLogger(__name__)


class _MemorySubscription(Subscription):
    def __init__(self, store: "MemoryKV", channel: str, callback: MessageCallback) -> None:
        self._store = store
        self._channel = channel
        self._callback = callback

    async def deliver(self, message: bytes) -> None:
        try:
            outcome = self._callback(message)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            # As the Redis store does: a failing subscriber is logged, not left in a dead task.
            log.exception("subscriber to %s failed", self._channel)

    async def close(self) -> None:
        self._store.subscribers[self._channel].discard(self)


class MemoryKV(KV):
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._fences: dict[str, int] = defaultdict(int)
        self.subscribers: dict[str, set[_MemorySubscription]] = defaultdict(set)
        self.closed = False
        self.name = uuid.uuid4().hex  # see instance(); a test may restart the store by it

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._now():
            del self._values[key]
            return None
        return value

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._now() + ttl

    async def start(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(key) for key in keys]

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        if only_if_absent and self._live(key) is not None:
            return False
        self._values[key] = (value, self._expiry(ttl))
        return True

    async def set_many(self, items: dict[str, bytes], *, ttl: float) -> None:
        for key, value in items.items():
            self._values[key] = (value, self._expiry(ttl))

    async def claim_many_and_get(
        self,
        claims: dict[str, bytes],
        *,
        ttl: float,
        free: bytes,
        forced: dict[str, bytes],
        get_keys: Sequence[str],
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        holders = []
        for key, value in claims.items():
            held = self._live(key)
            holder = None if held in (free, value) else held
            if holder is None:
                self._values[key] = (value, self._expiry(ttl))
            holders.append(holder)
        await self.set_many(forced, ttl=ttl)
        return holders, [self._live(key) for key in get_keys]

    async def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                del self._values[key]
                removed += 1
        return removed

    async def incr(self, key: str, *, ttl: float) -> int:
        current = self._live(key)
        if current is None:
            self._values[key] = (b"1", self._expiry(ttl))
            return 1
        value = int(current) + 1
        self._values[key] = (str(value).encode(), self._values[key][1])
        return value

    async def decr(self, key: str) -> int | None:
        current = self._live(key)
        if current is None:
            return None
        value = int(current) - 1
        self._values[key] = (str(value).encode(), self._values[key][1])
        return value

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        expires = self._values[key][1]
        return None if expires is None else max(expires - self._now(), 0.0)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> int | None:
        key = _lease_key(name)
        holder = self._live(key)
        if holder is not None and holder.decode() != owner:
            return None
        if holder is None:
            self._fences[name] += 1
        self._values[key] = (owner.encode(), self._expiry(ttl))
        return self._fences[name]

    def drop_lease(self, name: str) -> None:
        """Free the lease ``name`` whoever holds it (a process gone with its store's state
        saved: its holder will not renew it); its fencing counter stays."""
        self._values.pop(_lease_key(name), None)

    async def release_lease(self, name: str, owner: str) -> None:
        key = _lease_key(name)
        holder = self._live(key)
        if holder is not None and holder.decode() == owner:
            del self._values[key]

    async def publish(self, channel: str, message: bytes) -> None:
        for subscription in list(self.subscribers[channel]):
            task = asyncio.create_task(subscription.deliver(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def subscribe(self, channel: str, callback: MessageCallback) -> Subscription:
        subscription = _MemorySubscription(self, channel, callback)
        self.subscribers[channel].add(subscription)
        return subscription

    async def ping(self) -> bool:
        return not self.closed

    async def instance(self) -> str | None:
        return self.name

    def snapshot(self) -> dict[str, Any]:
        """What the store holds, as JSON: each live value with the seconds it has left."""
        now = self._now()
        values = {}
        for key in list(self._values):
            if (value := self._live(key)) is not None:
                expires = self._values[key][1]
                left = None if expires is None else expires - now
                values[key] = [base64.b64encode(value).decode("ascii"), left]
        return {"version": 1, "taken_at": time.time(), "values": values, "fences": self._fences}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Hold what :meth:`snapshot` held, less the time since (values past their TTL are
        dropped)."""
        if snapshot.get("version") != 1:
            raise ValueError("not a snapshot of this store")
        elapsed = max(0.0, time.time() - float(snapshot["taken_at"]))
        for key, (value, left) in snapshot["values"].items():
            if left is None or left > elapsed:
                ttl = None if left is None else left - elapsed
                self._values[key] = (base64.b64decode(value), self._expiry(ttl))
        for name, fence in snapshot["fences"].items():
            self._fences[name] = max(self._fences[name], int(fence))


def _lease_key(name: str) -> str:
    return f"lease:{name}"
