"""Publish and subscribe, on every key-value store."""

import asyncio
import secrets

import pytest

from cloudtask.kv import redis as redis_kv
from cloudtask.kv.base import KV
from tests.helpers import eventually

# Redis's channels are the server's, not a database's: test processes running side by side
# each listen on channels of their own.
CANCEL = f"cancel-{secrets.token_hex(4)}"
OTHER = f"other-{secrets.token_hex(4)}"


async def test_an_async_subscriber_receives_what_is_published(kv: KV) -> None:
    received: list[bytes] = []

    async def on_message(message: bytes) -> None:
        received.append(message)

    subscription = await kv.subscribe(CANCEL, on_message)
    await kv.publish(CANCEL, b"job-1")
    await kv.publish(CANCEL, b"job-2")

    async def both() -> bool:
        return len(received) == 2

    await eventually(both)
    assert received == [b"job-1", b"job-2"]
    await subscription.close()


async def test_a_sync_subscriber_receives_what_is_published(kv: KV) -> None:
    received: list[bytes] = []
    subscription = await kv.subscribe(CANCEL, received.append)
    await kv.publish(CANCEL, b"job-1")

    async def arrived() -> list[bytes]:
        return received

    assert await eventually(arrived) == [b"job-1"]
    await subscription.close()


async def test_every_subscriber_of_a_channel_receives_the_message_and_no_other(kv: KV) -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    elsewhere: list[bytes] = []
    subscriptions = [
        await kv.subscribe(CANCEL, first.append),
        await kv.subscribe(CANCEL, second.append),
        await kv.subscribe(OTHER, elsewhere.append),
    ]
    await kv.publish(CANCEL, b"job-1")
    await kv.publish(OTHER, b"marker")

    async def delivered() -> bool:
        return first == second == [b"job-1"] and elsewhere == [b"marker"]

    await eventually(delivered)
    for subscription in subscriptions:
        await subscription.close()


async def test_a_closed_subscription_receives_nothing_more(kv: KV) -> None:
    closed: list[bytes] = []
    witness: list[bytes] = []
    subscription = await kv.subscribe(CANCEL, closed.append)
    still_open = await kv.subscribe(CANCEL, witness.append)
    await kv.publish(CANCEL, b"before")

    async def both_heard() -> bool:
        return closed == witness == [b"before"]

    await eventually(both_heard)
    await subscription.close()
    await kv.publish(CANCEL, b"after")

    async def witness_heard() -> bool:
        return witness == [b"before", b"after"]

    await eventually(witness_heard)
    assert closed == [b"before"]
    await still_open.close()


async def test_a_failing_subscriber_is_logged_and_still_gets_later_messages(
    kv: KV, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[bytes] = []

    def fails_first(message: bytes) -> None:
        received.append(message)
        if message == b"bad":
            raise ValueError("subscriber failed")

    subscription = await kv.subscribe(CANCEL, fails_first)
    await kv.publish(CANCEL, b"bad")
    await kv.publish(CANCEL, b"good")

    async def both() -> bool:
        return received == [b"bad", b"good"]

    await eventually(both)
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert [r.getMessage() for r in failures] == [f"subscriber to {CANCEL} failed"]
    await subscription.close()


async def test_publishing_without_subscribers_is_harmless(kv: KV) -> None:
    await kv.publish("nobody-listens", b"hello")


async def test_closing_a_subscription_does_not_wait_on_a_callback_that_will_not_stop(
    kv: KV, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopping service closes its subscriptions; one whose listener does not end when told
    # (here a callback that ignores the cancel) must not hold the stop up for ever.
    monkeypatch.setattr(redis_kv, "CLOSE_WAIT", 0.3, raising=False)
    inside, finished = asyncio.Event(), asyncio.Event()

    async def stubborn(message: bytes) -> None:
        inside.set()
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # told to stop, it carries on a while
        finished.set()

    subscription = await kv.subscribe(CANCEL, stubborn)
    await kv.publish(CANCEL, b"job-1")
    await asyncio.wait_for(inside.wait(), 5)
    await asyncio.wait_for(subscription.close(), 2)
    await asyncio.wait_for(finished.wait(), 5)
    await kv.publish(CANCEL, b"job-2")  # what a listener still reading would take: nothing
    await asyncio.sleep(0.1)
