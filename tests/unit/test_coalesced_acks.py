"""Which frames the RabbitMQ broker's coalesced acknowledgements send, tag by tag.

The channel here is a stand-in that records the ack frames it would send; that the real broker
settles exactly what was acked is tested against RabbitMQ in tests/backends.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from cloudtask.broker.acks import Acks


@dataclass
class Sent:
    """The ack frames, in order, checked as RabbitMQ would: a tag no longer outstanding (already
    covered by a ``multiple``) closes the channel."""

    frames: list[tuple[int, bool]] = field(default_factory=list)
    outstanding: set[int] = field(default_factory=set)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        tag = delivery_tag
        assert tag in self.outstanding, f"unknown delivery tag {tag}"
        self.frames.append((tag, multiple))
        self.outstanding -= {t for t in self.outstanding if t <= tag} if multiple else {tag}
        for _ in range(3):  # the frame is queued at once, then drained: other tasks run meanwhile
            await asyncio.sleep(0)


def _setup(*tags: int) -> tuple[Sent, Acks]:
    sent = Sent(outstanding=set(tags))
    return sent, Acks(cast(Any, sent))


async def test_acks_of_one_turn_below_every_unsettled_delivery_are_one_frame() -> None:
    sent, acks = _setup(1, 2, 3, 4, 5)
    for tag in sorted(sent.outstanding):
        acks.delivered(tag)
    await asyncio.gather(*(acks.ack(tag) for tag in (1, 2, 3, 5)))
    # 4 is still held: one frame settles 1-3, 5 goes on its own.
    assert sent.frames == [(3, True), (5, False)]
    await acks.ack(4)
    assert sent.frames[2:] == [(4, False)]


async def test_a_delivery_not_yet_seen_by_its_consumer_is_never_covered() -> None:
    sent, acks = _setup(1, 2, 3, 4)
    for tag in (1, 2, 4):  # 3 has arrived, its consumer task has not run yet
        acks.delivered(tag)
    await asyncio.gather(*(acks.ack(tag) for tag in (1, 2, 4)))
    assert sent.frames == [(2, True), (4, False)]
    acks.delivered(3)
    await acks.ack(3)
    assert sent.frames[2:] == [(3, False)]


async def test_a_rejected_delivery_does_not_stop_the_run_after_it() -> None:
    sent, acks = _setup(1, 2, 3)
    for tag in sorted(sent.outstanding):
        acks.delivered(tag)
    acks.settled(2)
    sent.outstanding.discard(2)  # its reject went out
    await asyncio.gather(acks.ack(1), acks.ack(3))
    assert sent.frames == [(3, True)]


async def test_a_lone_ack_is_a_plain_frame() -> None:
    sent, acks = _setup(1, 2)
    for tag in sorted(sent.outstanding):
        acks.delivered(tag)
    await acks.ack(2)
    await acks.ack(1)
    assert sent.frames == [(2, False), (1, False)]


async def test_acks_asked_for_while_a_flush_is_on_the_wire_wait_for_the_next() -> None:
    sent, acks = _setup(1, 2, 3, 4)
    for tag in sorted(sent.outstanding):
        acks.delivered(tag)
    first = asyncio.gather(acks.ack(1), acks.ack(3))
    await asyncio.sleep(0)  # the flush has sent 1 and not yet 3
    await asyncio.gather(first, acks.ack(2), acks.ack(4))
    assert sent.frames == [(1, False), (3, False), (4, True)]
    assert sent.outstanding == set()


async def test_a_frame_that_fails_fails_only_the_acks_it_carried() -> None:
    # The connection goes after the multiple ack went out: 1-3 were sent (the worker must not
    # take them for unacknowledged), 5 was not.
    sent, acks = _setup(1, 2, 3, 4, 5)
    for tag in sorted(sent.outstanding):
        acks.delivered(tag)
    real = sent.basic_ack

    async def failing_on_5(delivery_tag: int, multiple: bool = False) -> None:
        if delivery_tag == 5:
            raise ConnectionError("the connection went")
        await real(delivery_tag, multiple)

    sent.basic_ack = failing_on_5  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(acks.ack(tag) for tag in (1, 2, 3, 5)), return_exceptions=True
    )
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], ConnectionError)
    assert sent.frames == [(3, True)]
