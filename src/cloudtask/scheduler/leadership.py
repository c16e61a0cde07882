"""Which scheduler leads: a lease in the key-value store, fenced in the database.

Every scheduler tries to take the lease (a TTL key, renewed by its holder every third of the TTL;
followers try every second, so a dead leader is replaced within the TTL plus a second). A new
leader raises the fencing token in the database, and each of its transactions checks the token
first: a leader that was paused past its lease and wakes after another took over cannot act.

If the key-value store is unreachable, every scheduler acts (``degraded``): the database alone
keeps dispatching and firing exactly-once (row locks with SKIP LOCKED, conditional updates and the
unique key per firing), so scheduling goes on rather than stopping.

A store that lost its keys without being unreachable for long (Redis restarted without
persistence: the client reconnects within one call) counts as an outage too, so that workers'
leases are not judged before their heartbeats wrote them again: each check writes
``STORE_MARK`` (its write time) if it is missing, and no lease is judged until the mark is a
lease period old; and a new run of the server (``KV.instance``: one that reloaded a snapshot
keeps the mark, but not the leases as they are) restarts the wait as well.
"""

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtask.contracts.signals import SCHEDULER_LEASE, STORE_MARK
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.errors import DatabaseUnavailable, KVUnavailable
from cloudtask.kv.base import KV

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, kv: KV, db: AsyncEngine, holder: str, lease_seconds: float) -> None:
        self._kv = kv
        self._db = db
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.token: int | None = None
        self.degraded = False
        self.changed = asyncio.Event()
        # Steady "since forever" unless this scheduler saw otherwise: since the store came back
        # after an outage, lost its keys or restarted; None while it is unreachable.
        self._store_up_since: float | None = float("-inf")
        self._marked = False  # whether this scheduler found or wrote the store's mark
        self._mark_written = float("-inf")  # when the mark was written (wall clock, any host)
        self._mark: bytes | None = None  # the mark as last read (one this scheduler wrote: None)
        self._instance: str | None = None  # the store's run, as last seen (if it says)

    @property
    def acting(self) -> bool:
        return self.token is not None or self.degraded

    @property
    def store_instance(self) -> str | None:
        """The store's run this scheduler last saw (see ``KV.instance``)."""
        return self._instance

    def store_steady_for(self, seconds: float) -> bool:
        """Whether the key-value store has answered for ``seconds``: after an outage, workers
        need a heartbeat to write the leases they could not take meanwhile."""
        since = self._store_up_since
        return (
            since is not None
            and time.monotonic() - since >= seconds
            # However this scheduler found the store, it has held its keys that long: another
            # scheduler may have seen the loss (and written the mark) that this one did not.
            and time.time() - self._mark_written >= seconds
        )

    async def refresh(self) -> None:
        was = self.acting
        try:
            held = await self._kv.acquire_lease(SCHEDULER_LEASE, self.holder, self.lease_seconds)
            now = time.time()
            found = await self._kv.get(STORE_MARK)
            if found is None and not await self._kv.set(
                STORE_MARK, repr(now).encode(), only_if_absent=True
            ):
                found = await self._kv.get(STORE_MARK)  # another scheduler's, just written
            instance = await self._kv.instance()
        except KVUnavailable:
            if not self.degraded:
                log.warning("key-value store unreachable: every scheduler acts until it is back")
            self.degraded, self.token = True, None
            self._store_up_since = None
        else:
            self.degraded = False
            emptied = found is None  # the mark was missing: written now
            restarted = None not in (instance, self._instance) and instance != self._instance
            if (emptied and self._marked) or restarted:
                log.warning("key-value store lost its keys: leases are judged once rewritten")
            # A store new to CloudTask is waited for the same way, once. A restart that reloaded
            # the keys from a snapshot brings leases back as they were, not as they are.
            if self._store_up_since is None or emptied or restarted:
                self._store_up_since = time.monotonic()
            if emptied:
                self._mark_written, self._mark = now, None
            elif found != self._mark:
                # Not later than when first seen: a mark from a host whose clock runs ahead
                # would hold back every judgment until this clock caught up.
                self._mark_written, self._mark = min(_written(found), now), found
            self._marked = True
            if instance is not None:  # a store that stops saying which run it is, is the same
                self._instance = instance
            if held is None:
                self.token = None
            elif self.token is None:
                await self._take()
        if was != self.acting:
            self.changed.set()

    async def _take(self) -> None:
        try:
            async with session.transaction(self._db) as conn:
                token = await dispatch_q.take_leadership(conn, self.holder, now=utcnow())
        except DatabaseUnavailable:
            return
        self.token = token  # only once committed: until then it fences nothing
        log.info(
            "scheduler leads",
            extra={"action": "scheduler.leader", "holder": self.holder, "token": self.token},
        )

    async def fenced(self, conn: AsyncConnection) -> bool:
        """Whether this scheduler may act in ``conn``'s transaction."""
        if self.degraded:
            return True
        if self.token is None:
            return False
        if await dispatch_q.still_leader(conn, self.holder, self.token):
            return True
        log.warning("another scheduler took over; stepping down")
        self.token = None
        return False

    async def run(self) -> None:
        """Renew or contend for the lease until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.refresh()
            except Exception:
                # Contending goes on: a scheduler that stopped renewing would lose the lease
                # while its loop still acted, and one that stopped contending would never lead.
                log.exception("scheduler leadership check failed")
            interval = self.lease_seconds / 3 if self.token is not None else 1.0
            # A steady beat, however long the check took: a follower tries every second.
            await asyncio.sleep(max(interval - (loop.time() - started), 0.0))

    async def release(self) -> None:
        if self.token is not None:
            with contextlib.suppress(KVUnavailable):
                await self._kv.release_lease(SCHEDULER_LEASE, self.holder)
        self.token = None


def _written(mark: bytes | None) -> float:
    """When the mark was written; an older scheduler's mark ("1") says nothing of it."""
    try:
        return float(mark or b"")
    except ValueError:
        return float("-inf")
