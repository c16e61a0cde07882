"""Reading AMQP frames that RabbitMQ passes on but pamqp cannot decode, instead of dying on them.

RabbitMQ does not check that a message's short strings (its header names, its ``content_type``,
``message_id``, ``correlation_id`` …) are UTF-8, nor that its timestamps are dates. pamqp
raises on either while aiormq reads the frame, and aiormq then closes the whole connection: the
message goes back to the head of its queue, the consumer reconnects, is handed the same message
and dies again, so one message from a careless peer stops every worker on the queue for good.

:func:`tolerate_undecodable_fields` makes pamqp's decoders read such fields instead: a short
string's bytes that are not UTF-8 become U+FFFD (as Python's ``errors="replace"``, so the text can
be published again, to ``jobs.dead`` for instance), a timestamp outside the dates Python can hold
becomes absent (``None``). The message then reaches the service's own reading, which judges it
like any other (its body decides). pamqp already reads a long string that is not UTF-8 as bytes.
"""

import datetime
import struct

from pamqp import common, decode

_BYTE = struct.Struct(">B")
_INTEGER = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")


def short_str(value: bytes) -> tuple[int, str]:
    try:
        (length,) = _BYTE.unpack_from(value)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    try:
        (seconds,) = _TIMESTAMP.unpack_from(value)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack timestamp value") from err
    if seconds > 0xFFFFFFFF:
        seconds /= 1000.0  # as pamqp: past the year 2106 it is taken for milliseconds
    try:
        return 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return 8, None


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's own, but for the names, read as :func:`short_str` reads."""
    try:
        (length,) = _INTEGER.unpack_from(value)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err
    end = 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    table: common.FieldTable = {}
    offset = 4
    while offset < end:
        key_length = value[offset] + 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        _, key = short_str(value[offset : offset + key_length])
        offset += key_length
        consumed, table[key] = decode.embedded_value(value[offset:])
        offset += consumed
    return end, table


def tolerate_undecodable_fields() -> None:
    """Put the decoders above in pamqp's tables (idempotent; process-wide, as pamqp's are)."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["timestamp"] = timestamp
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"T"] = timestamp
    decode.TABLE_MAPPING[b"F"] = field_table
