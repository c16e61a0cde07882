"""Which frames the RabbitMQ broker's coalesced acknowledgements send, tag by tag.

The messages here are stand-ins that record the ack frames they would send; that the real
broker settles exactly what was acked is tested against RabbitMQ in tests/backends.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from cloudtask.broker.acks import Acks


@dataclass
class Sent:
    """The ack frames, in order, checked as RabbitMQ would: a tag no longer outstanding (already
    covered by a ``multiple``) closes the channel."""

    frames: list[tuple[int, bool]] = field(default_factory=list)
    outstanding: set[int] = field(default_factory=set)

    def ack(self, tag: int, multiple: bool) -> None:
        assert tag in self.outstanding, f"unknown delivery tag {tag}"
        self.frames.append((tag, multiple))
        self.outstanding -= {t for t in self.outstanding if t <= tag} if multiple else {tag}


@dataclass
class Message:
    delivery_tag: int
    sent: Sent

    async def ack(self, multiple: bool = False) -> None:
        self.sent.ack(self.delivery_tag, multiple)
        for _ in range(3):  # the frame is queued at once, then drained: other tasks run meanwhile
            await asyncio.sleep(0)


def _messages(sent: Sent, *tags: int) -> dict[int, AbstractIncomingMessage]:
    sent.outstanding.update(tags)
    return {tag: cast(Any, Message(tag, sent)) for tag in tags}


async def test_acks_of_one_turn_below_every_unsettled_delivery_are_one_frame() -> None:
    sent, acks = Sent(), Acks()
    messages = _messages(sent, 1, 2, 3, 4, 5)
    for message in messages.values():
        acks.delivered(message)
    await asyncio.gather(*(acks.ack(messages[tag]) for tag in (1, 2, 3, 5)))
    # 4 is still held: one frame settles 1-3, 5 goes on its own.
    assert sent.frames == [(3, True), (5, False)]
    await acks.ack(messages[4])
    assert sent.frames[2:] == [(4, False)]


async def test_a_delivery_not_yet_seen_by_its_consumer_is_never_covered() -> None:
    sent, acks = Sent(), Acks()
    messages = _messages(sent, 1, 2, 3, 4)
    for tag in (1, 2, 4):  # 3 has arrived, its consumer task has not run yet
        acks.delivered(messages[tag])
    await asyncio.gather(*(acks.ack(messages[tag]) for tag in (1, 2, 4)))
    assert sent.frames == [(2, True), (4, False)]
    acks.delivered(messages[3])
    await acks.ack(messages[3])
    assert sent.frames[2:] == [(3, False)]


async def test_a_rejected_delivery_does_not_stop_the_run_after_it() -> None:
    sent, acks = Sent(), Acks()
    messages = _messages(sent, 1, 2, 3)
    for message in messages.values():
        acks.delivered(message)
    acks.settled(messages[2])
    sent.outstanding.discard(2)  # its reject went out
    await asyncio.gather(acks.ack(messages[1]), acks.ack(messages[3]))
    assert sent.frames == [(3, True)]


async def test_a_lone_ack_is_a_plain_frame() -> None:
    sent, acks = Sent(), Acks()
    messages = _messages(sent, 1, 2)
    for message in messages.values():
        acks.delivered(message)
    await acks.ack(messages[2])
    await acks.ack(messages[1])
    assert sent.frames == [(2, False), (1, False)]


async def test_acks_asked_for_while_a_flush_is_on_the_wire_wait_for_the_next() -> None:
    sent, acks = Sent(), Acks()
    messages = _messages(sent, 1, 2, 3, 4)
    for message in messages.values():
        acks.delivered(message)
    first = asyncio.gather(acks.ack(messages[1]), acks.ack(messages[3]))
    await asyncio.sleep(0)  # the flush has sent 1 and not yet 3
    await asyncio.gather(first, acks.ack(messages[2]), acks.ack(messages[4]))
    assert sent.frames == [(1, False), (3, False), (4, True)]
    assert sent.outstanding == set()
