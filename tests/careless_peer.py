"""Publishing as a careless AMQP peer: fields RabbitMQ passes on without reading them, though
pamqp cannot decode them (short strings that are not UTF-8, a timestamp past any date)."""

import datetime
import struct
from typing import Any

import aio_pika
import pytest
from pamqp import encode

# A timestamp equal to this is written as 2**63 seconds, past any date a reader can hold.
FAR_TIMESTAMP = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
# Written as the bytes b"\xff", "\xfe": not UTF-8.
NOT_UTF8 = "\udcff\udcfe"
NOT_UTF8_READ = "\ufffd\ufffd"  # how the services read those bytes


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
