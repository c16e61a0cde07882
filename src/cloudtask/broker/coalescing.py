"""The AMQP connection's socket writes, gathered per turn of the event loop.

aiormq hands the socket each publish, ack and confirm-bearing method as its own write: a system
call and, on loopback, the broker's side of TCP too, per frame. A busy worker queues many in one
turn of the loop (a report, the acks of several deliveries, the next reports), so the writer here
keeps what is written during a turn and sends it as one write when the turn ends. Nothing waits
longer than that turn, and the order of frames is kept.

aiormq awaits ``drain()`` after each frame it must report as written (a publish), which would
send each at once. ``drain`` is flow control, though, not a flush: asyncio's returns at once while
the transport holds less than its high-water mark, and this one does the same while less than
``KEEP_AT_MOST`` is kept, sending first when more is. ``close`` and ``write_eof`` send what is
kept before they act.

It plugs in through aiormq's public ``transport_factory``; aio-pika passes the connection's
arguments through (see :class:`CoalescingConnection`).
"""

import asyncio
from typing import Any

import aiormq
from aio_pika import RobustConnection
from aiormq.connection import TCPTransportFactory
from yarl import URL

STREAM_LIMIT = 2**16  # asyncio.open_connection's default
KEEP_AT_MOST = 2**16  # asyncio's default high-water mark for a transport's buffer


class CoalescingWriter(asyncio.StreamWriter):
    """A ``StreamWriter`` whose writes within one turn of the loop reach the socket together."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._event_loop = loop
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._send_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        self._kept.append(chunk)
        self._kept_size += len(chunk)
        if self._send_handle is None:
            self._send_handle = self._event_loop.call_soon(self.send_kept)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def send_kept(self) -> None:
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        if self._kept:
            data = b"".join(self._kept) if len(self._kept) > 1 else self._kept[0]
            self._kept.clear()
            self._kept_size = 0
            if self.transport.is_closing():
                # The connection is lost (aiormq finds out on its own and reconnects): what
                # was kept for it has nowhere to go, and uvloop would raise from this callback.
                return
            super().write(data)

    async def drain(self) -> None:
        if self._kept_size >= KEEP_AT_MOST:
            self.send_kept()
        await super().drain()  # waits while the transport is over its mark; raises if lost

    def write_eof(self) -> None:
        self.send_kept()
        super().write_eof()

    def close(self) -> None:
        self.send_kept()
        super().close()


class CoalescingTransportFactory(TCPTransportFactory):
    """aiormq's plain TCP transport, with a :class:`CoalescingWriter` (what
    ``asyncio.open_connection`` does, but with that writer)."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.pop("ssl_context_provider", None)  # plain TCP, as in TCPTransportFactory
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host or "localhost", port=url.port or 5672, **kwargs
            )
        except OSError as exc:
            raise aiormq.AMQPConnectionError(*exc.args) from exc
        return reader, CoalescingWriter(transport, protocol, reader, loop)


class CoalescingConnection(RobustConnection):
    """aio-pika's robust connection over :class:`CoalescingTransportFactory` (``amqp://``
    only; ``amqps://`` keeps aiormq's TLS transport)."""

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if self.url.scheme == "amqp":
            self.kwargs["transport_factory"] = CoalescingTransportFactory()
