"""Login throttling across api processes: failed attempts per email, and checks in flight.

Two counters per email in the key-value store: the failures of the window (it opens with the
first failure) and the password checks in flight. A check may start only while the failures
plus the checks already in flight stay under the limit, so attempts sent together can never
check more passwords than the limit allows; one that finds the room taken by checks in flight
waits for their outcome rather than being refused, since only failures count against an email.

Each attempt adds itself to the in-flight counter before reading the failures: the counter's
increments order the attempts, and each one counts those before it. A failure is added before
its check leaves the in-flight counter, so that no moment undercounts it.
"""

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.policies.login_throttle import LoginThrottle

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
        failures_key = f"login-failures:{email_key}"
        checks_key = f"login-checks:{email_key}"
        await self._enter(failures_key, checks_key)
        attempt = Attempt()
        try:
            yield attempt
        finally:
            # Answered whatever the store says now: a failure it cannot count is still a 401.
            with contextlib.suppress(KVUnavailable):
                if attempt.failed:
                    await self._kv.incr(failures_key, ttl=self._throttle.window_seconds)
                await self._kv.decr(checks_key)

    async def _enter(self, failures_key: str, checks_key: str) -> None:
        give_up_waiting = time.monotonic() + WAIT_AT_MOST
        while True:
            ahead = await self._kv.incr(checks_key, ttl=IN_FLIGHT_TTL) - 1
            try:
                failures = int(await self._kv.get(failures_key) or 0)
            except BaseException:
                with contextlib.suppress(KVUnavailable):
                    await self._kv.decr(checks_key)
                raise
            if self._throttle.is_blocked(failures):
                await self._kv.decr(checks_key)
                retry_after = await self._kv.ttl(failures_key) or self._throttle.window_seconds
                raise LoginThrottled(max(math.ceil(retry_after), 1))
            if not self._throttle.is_blocked(failures + ahead):
                return
            if time.monotonic() > give_up_waiting:
                return  # the count in flight outlived its checks: check this one anyway
            await self._kv.decr(checks_key)
            await asyncio.sleep(POLL_SECONDS * (0.5 + random.random()))
