"""Publish and subscribe, on every key-value store."""

import pytest

from cloudtask.kv.base import KV
from tests.helpers import eventually


async def test_an_async_subscriber_receives_what_is_published(kv: KV) -> None:
    received: list[bytes] = []

    async def on_message(message: bytes) -> None:
        received.append(message)

    subscription = await kv.subscribe("cancel", on_message)
    await kv.publish("cancel", b"job-1")
    await kv.publish("cancel", b"job-2")

    async def both() -> bool:
        return len(received) == 2

    await eventually(both)
    assert received == [b"job-1", b"job-2"]
    await subscription.close()


async def test_a_sync_subscriber_receives_what_is_published(kv: KV) -> None:
    received: list[bytes] = []
    subscription = await kv.subscribe("cancel", received.append)
    await kv.publish("cancel", b"job-1")

    async def arrived() -> list[bytes]:
        return received

    assert await eventually(arrived) == [b"job-1"]
    await subscription.close()


async def test_every_subscriber_of_a_channel_receives_the_message_and_no_other(kv: KV) -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    elsewhere: list[bytes] = []
    subscriptions = [
        await kv.subscribe("cancel", first.append),
        await kv.subscribe("cancel", second.append),
        await kv.subscribe("other", elsewhere.append),
    ]
    await kv.publish("cancel", b"job-1")
    await kv.publish("other", b"marker")

    async def delivered() -> bool:
        return first == second == [b"job-1"] and elsewhere == [b"marker"]

    await eventually(delivered)
    for subscription in subscriptions:
        await subscription.close()


async def test_a_closed_subscription_receives_nothing_more(kv: KV) -> None:
    closed: list[bytes] = []
    witness: list[bytes] = []
    subscription = await kv.subscribe("cancel", closed.append)
    still_open = await kv.subscribe("cancel", witness.append)
    await kv.publish("cancel", b"before")

    async def both_heard() -> bool:
        return closed == witness == [b"before"]

    await eventually(both_heard)
    await subscription.close()
    await kv.publish("cancel", b"after")

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

    subscription = await kv.subscribe("cancel", fails_first)
    await kv.publish("cancel", b"bad")
    await kv.publish("cancel", b"good")

    async def both() -> bool:
        return received == [b"bad", b"good"]

    await eventually(both)
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert [r.getMessage() for r in failures] == ["subscriber to cancel failed"]
    await subscription.close()


async def test_publishing_without_subscribers_is_harmless(kv: KV) -> None:
    await kv.publish("nobody-listens", b"hello")
