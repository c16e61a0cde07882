"""The AMQP connection's writer: what is written in one turn of the loop reaches the socket as
one write, in order; ``drain`` sends only past the mark, and nothing kept is lost to ``close``.
Over a real loopback socket; the transport's ``write`` is counted."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from yarl import URL

from cloudtask.broker.coalescing import KEEP_AT_MOST, CoalescingTransportFactory, CoalescingWriter


@dataclass
class Peer:
    """The far end: everything it has read, and whether it saw the end of the stream."""

    received: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            self.received += chunk
        writer.close()
        await writer.wait_closed()
        self.ended.set()

    async def wait_for(self, size: int) -> bytes:
        async def enough() -> None:
            while len(self.received) < size:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(enough(), timeout=5)
        return bytes(self.received)


@dataclass
class Connected:
    peer: Peer
    writer: CoalescingWriter
    sends: list[bytes]


@pytest.fixture
async def connected() -> AsyncIterator[Connected]:
    peer = Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
    assert isinstance(writer, CoalescingWriter)
    sends: list[bytes] = []
    send = writer.transport.write

    def counted(data: bytes) -> None:
        sends.append(bytes(data))
        send(data)

    writer.transport.write = counted  # type: ignore[method-assign]
    try:
        yield Connected(peer, writer, sends)
    finally:
        writer.close()
        await asyncio.wait_for(peer.ended.wait(), timeout=5)
        server.close()
        await server.wait_closed()


async def test_writes_in_one_turn_of_the_loop_go_out_as_one_send_in_order(
    connected: Connected,
) -> None:
    connected.writer.write(b"one,")
    connected.writer.writelines([b"two,", bytearray(b"three,")])
    connected.writer.write(memoryview(b"four"))
    assert connected.sends == []  # kept until the turn ends
    assert await connected.peer.wait_for(18) == b"one,two,three,four"
    assert connected.sends == [b"one,two,three,four"]

    connected.writer.write(b"-later")
    assert await connected.peer.wait_for(24) == b"one,two,three,four-later"
    assert connected.sends == [b"one,two,three,four", b"-later"]


async def test_drain_keeps_a_little_but_sends_at_once_past_the_mark(
    connected: Connected,
) -> None:
    connected.writer.write(b"a")
    connected.writer.write(b"b")
    await connected.writer.drain()  # flow control, not a flush: well under the mark
    assert connected.sends == []
    assert await connected.peer.wait_for(2) == b"ab"
    assert connected.sends == [b"ab"]

    big = b"x" * KEEP_AT_MOST
    connected.writer.write(b"c")
    connected.writer.write(big)
    await connected.writer.drain()
    assert connected.sends == [b"ab", b"c" + big]
    await asyncio.sleep(0)  # the turn's own send finds nothing left
    assert connected.sends == [b"ab", b"c" + big]
    assert await connected.peer.wait_for(3 + KEEP_AT_MOST) == b"abc" + big


@pytest.mark.parametrize("end", ["write_eof", "close"])
async def test_ending_the_stream_sends_what_is_kept_first(connected: Connected, end: str) -> None:
    connected.writer.write(b"last ")
    connected.writer.write(b"words")
    getattr(connected.writer, end)()
    await asyncio.wait_for(connected.peer.ended.wait(), timeout=5)
    assert bytes(connected.peer.received) == b"last words"
    connected.writer.close()  # nothing is sent twice
    assert connected.sends == [b"last words"]


async def test_what_is_kept_for_a_lost_connection_is_dropped_without_an_error(
    connected: Connected,
) -> None:
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        connected.writer.write(b"never sent")
        connected.writer.transport.abort()  # the connection is lost within this turn
        await asyncio.sleep(0.05)  # the turn ends: the kept bytes would be sent now
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    assert connected.sends == []
