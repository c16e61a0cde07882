"""What CloudTask needs from a key-value store: TTL keys, counters, leases and pub/sub.

It serves idempotency keys, login throttling, worker leases, cancel signals and the scheduler's
leadership. None of these is the only record of anything that matters: the database is.
"""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

MessageCallback = Callable[[bytes], Awaitable[None] | None]


class Subscription(ABC):
    @abstractmethod
    async def close(self) -> None: ...


class KV(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Prepare the store. A store that is down does not fail this: it is used lazily, and
        health checks report it until it is back."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``value``; with ``only_if_absent``, only if the key does not exist. Returns
        whether it was stored."""

    @abstractmethod
    async def set_many(self, items: dict[str, bytes], *, ttl: float) -> None: ...

    @abstractmethod
    async def claim_many_and_get(
        self,
        claims: dict[str, bytes],
        *,
        ttl: float,
        free: bytes,
        forced: dict[str, bytes],
        get_keys: Sequence[str],
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """In one round trip: store each of ``claims`` unless its key holds a value other than
        ``free`` or the claim's own (so that a claim sent twice is taken, not refused by its
        first write), store ``forced`` whatever their keys hold (as :meth:`set_many`), then read
        ``get_keys`` (a key written here reads its new value).
        Returns, for each claim in order, the value that kept it from being stored (``None``
        where it was), and the values read."""

    async def claim(self, key: str, value: bytes, *, ttl: float, free: bytes) -> bytes | None:
        """:meth:`claim_many_and_get` of one claim: the value that kept it from being stored,
        ``None`` where it was."""
        (holder,), _ = await self.claim_many_and_get(
            {key: value}, ttl=ttl, free=free, forced={}, get_keys=()
        )
        return holder

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def incr(self, key: str, *, ttl: float) -> int:
        """Add one to a counter and return it; a new counter expires after ``ttl`` seconds
        (a fixed window that opens with the first increment)."""

    @abstractmethod
    async def decr(self, key: str) -> int | None:
        """Take one back from a counter of :meth:`incr` and return it, its expiry unchanged; a
        counter that expired meanwhile stays gone (``None``)."""

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or ``None`` if it does not exist or never expires."""

    @abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> int | None:
        """Take or renew the lease ``name`` for ``owner``.

        Returns the lease's fencing token (which grows with every new holder, never with a
        renewal) while ``owner`` holds it, or ``None`` if somebody else does.
        """

    @abstractmethod
    async def release_lease(self, name: str, owner: str) -> None: ...

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None: ...

    @abstractmethod
    async def subscribe(self, channel: str, callback: MessageCallback) -> Subscription: ...

    @abstractmethod
    async def ping(self) -> bool: ...

    @abstractmethod
    async def instance(self) -> str | None:
        """Names the running store: another name means it restarted (or failed over), and what
        it holds is what it reloaded, if anything, not what it held. ``None`` if it does not
        say (a server that refuses to)."""
