"""Login throttling across api processes: failed attempts per email, and checks in flight.

Two keys per email in the key-value store: the times of its recent failures (see
``LoginThrottle``) and a counter of the password checks in flight. A check may start only while
the failures plus the checks already in flight stay under the limit, so attempts sent together
can never check more passwords than the limit allows; one that finds the room taken by checks in
flight waits for their outcome rather than being refused, since only failures count against an
email.

Each attempt adds itself to the in-flight counter before reading the failures: the counter's
increments order the attempts, and each one counts those before it. A failure is added before
its check leaves the in-flight counter, so that no moment undercounts it.
"""

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.policies.login_throttle import LoginThrottle

log = logging.getLogger(__name__)
# Writes of an email's failures that lost to another's before one is given up (each loser
# reads again: only a failure counted at that very moment makes it lose).
WRITE_TRIES = 20
# A process that dies mid-check leaves its count behind for this long at most.
IN_FLIGHT_TTL = 60.0
# How often a waiting attempt looks again; bcrypt takes 50-300 ms a check.
POLL_SECONDS = 0.02
# After this long waiting (only a count left behind makes it that long) an attempt is checked.
WAIT_AT_MOST = 10.0


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled for {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Attempt:
    failed: bool = False


class LoginGate:
    def __init__(self, kv: KV, throttle: LoginThrottle) -> None:
        self._kv = kv
        self._throttle = throttle

    @contextlib.asynccontextmanager
    async def attempt(self, email_key: str) -> AsyncIterator[Attempt]:
        """Admit one password check for ``email_key``; the caller sets ``failed`` on the
        :class:`Attempt` it gets. Raises :class:`LoginThrottled` once the limit is reached."""
        # Not login-failures: an older version's processes read a count there, and answered
        # 500 for these times while both ran (a rolling deploy).
        failures_key = f"login-failure-times:{email_key}"
        checks_key = f"login-checks:{email_key}"
        await self._enter(failures_key, checks_key)
        attempt = Attempt()
        try:
            yield attempt
        finally:
            # Answered whatever the store says now: a failure it cannot count is still a 401.
            with contextlib.suppress(KVUnavailable):
                if attempt.failed:
                    await self._count_failure(failures_key)
                await self._kv.decr(checks_key)

    async def _count_failure(self, failures_key: str) -> None:
        """Add this failure's time to the email's, in one write that fails if another process
        wrote them since they were read (then read again): no failure overwrites another's."""
        for _ in range(WRITE_TRIES):
            before = await self._kv.get(failures_key)
            now = time.time()
            recent = self._throttle.recent(_times(before), now)
            value = " ".join(f"{t:.6f}" for t in [*recent, now]).encode()
            ttl = self._throttle.window_seconds
            if await self._kv.claim(failures_key, value, ttl=ttl, free=before or b"") is None:
                return
        log.warning("a failed login was not counted: its email's failures kept changing")

    async def _enter(self, failures_key: str, checks_key: str) -> None:
        give_up_waiting = time.monotonic() + WAIT_AT_MOST
        while True:
            ahead = await self._kv.incr(checks_key, ttl=IN_FLIGHT_TTL) - 1
            try:
                stored = await self._kv.get(failures_key)
            except BaseException:
                with contextlib.suppress(KVUnavailable):
                    await self._kv.decr(checks_key)
                raise
            now = time.time()
            recent = self._throttle.recent(_times(stored), now)
            failures = len(recent)
            if self._throttle.is_blocked(failures):
                await self._kv.decr(checks_key)
                retry_after = self._throttle.retry_after(recent, now)
                raise LoginThrottled(max(math.ceil(retry_after), 1))
            if not self._throttle.is_blocked(failures + ahead):
                return
            if time.monotonic() > give_up_waiting:
                return  # the count in flight outlived its checks: check this one anyway
            await self._kv.decr(checks_key)
            await asyncio.sleep(POLL_SECONDS * (0.5 + random.random()))


def _times(stored: bytes | None) -> list[float]:
    """The failure times written by ``_count_failure`` (nothing for a value that is not)."""
    try:
        return [float(t) for t in (stored or b"").split()]
    except ValueError:
        return []
