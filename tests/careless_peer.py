"""Publishing as a careless AMQP peer: content headers RabbitMQ passes on, though pamqp cannot
decode them (short strings that are not UTF-8, a timestamp past any date, the "more flags" bit,
tables nested thousands deep)."""

import datetime
import struct
from typing import Any

import aio_pika
import aiormq
import pytest
from pamqp import encode
from pamqp.header import ContentHeader

from cloudtask.broker import publishing
from cloudtask.broker.base import OutgoingMessage

# A timestamp equal to this is written as 2**63 seconds, past any date a reader can hold.
FAR_TIMESTAMP = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
# Written as the bytes b"\xff", "\xfe": not UTF-8.
NOT_UTF8 = "\udcff\udcfe"
NOT_UTF8_READ = "\\xff\\xfe"  # how the services read those bytes


class _Name(str):
    """A header name pamqp's encoder writes as its bytes (it encodes names itself)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, encoding, "surrogateescape")


def _write_undecodable_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """pamqp's encoder, taught to write what a peer in another language may write."""

    def string(encoder: struct.Struct, value: str) -> bytes:
        data = value.encode("utf-8", "surrogateescape")
        return encoder.pack(len(data)) + data

    real_timestamp = encode.timestamp

    def timestamp(value: Any) -> bytes:
        if value == FAR_TIMESTAMP:
            return struct.pack(">Q", 2**63)
        return real_timestamp(value)

    monkeypatch.setattr(encode, "_string", string)
    monkeypatch.setattr(encode, "timestamp", timestamp)
    monkeypatch.setitem(encode.METHODS, "timestamp", timestamp)


async def publish_carelessly(
    monkeypatch: pytest.MonkeyPatch, url: str, queue: str, bodies: list[bytes]
) -> None:
    """Publish each body to ``queue`` (persistent, confirmed) with a header whose name is not
    UTF-8, a header holding a far timestamp, a correlation id that is not UTF-8 and a far
    timestamp of its own."""
    with monkeypatch.context() as patched:
        _write_undecodable_fields(patched)
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for body in bodies:
                message = aio_pika.Message(
                    body,
                    headers={_Name(f"x-{NOT_UTF8}"): 1, "x-sent": FAR_TIMESTAMP},
                    correlation_id=f"id-{NOT_UTF8}",
                    timestamp=FAR_TIMESTAMP,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await channel.default_exchange.publish(message, routing_key=queue)
        finally:
            await connection.close()


# Property flags: content_type, headers, delivery_mode; and the "more flags" bit alone.
_TYPE_HEADERS_PERSISTENT = 0x8000 | 0x2000 | 0x1000
MORE_FLAGS = struct.pack(">H", 0x0001)


def nested_headers(depth: int) -> bytes:
    """A headers table holding a table holding a table …, ``depth`` tables in all."""
    table = struct.pack(">I", 0)
    for _ in range(depth - 1):
        entry = b"\x01nF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


def headers_properties(table: bytes) -> bytes:
    """Property flags and values: application/json, ``table`` as headers, persistent."""
    content_type = b"application/json"
    return (
        struct.pack(">HB", _TYPE_HEADERS_PERSISTENT, len(content_type))
        + content_type
        + table
        + b"\x02"
    )


async def publish_raw_properties(
    monkeypatch: pytest.MonkeyPatch, url: str, queue: str, body: bytes, properties: bytes
) -> None:
    """Publish ``body`` (confirmed) with a content header whose flags and properties are the
    bytes ``properties``, whatever they hold."""

    class RawHeader(ContentHeader):
        def marshal(self) -> bytes:
            return struct.pack(">HxxQ", 60, self.body_size) + properties

    with monkeypatch.context() as patched:
        patched.setattr(publishing, "ContentHeader", RawHeader)
        connection = await aiormq.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            assert isinstance(channel, aiormq.Channel)
            await publishing.publish_confirmed(channel, [OutgoingMessage(queue, body)])
        finally:
            await connection.close()
