"""Reading AMQP frames that RabbitMQ passes on but pamqp cannot decode, instead of dying on them.

RabbitMQ checks little of a message's content header: not that its short strings (header names,
``content_type``, ``message_id``, ``correlation_id`` …) are UTF-8, nor that its timestamps are
dates, nor how deep its header tables nest, and it ignores the header's "more flags" bit. pamqp
raises on each while aiormq reads the frame (a ``RecursionError`` for a deep table, reading past
the flags for the bit), and aiormq then closes the whole connection: the message goes back to
the head of its queue, the consumer reconnects, is handed the same message and dies again, so one
message from a careless peer stops every consumer of the queue for good.

:func:`tolerate_undecodable_fields` makes pamqp read such a header as RabbitMQ does, or as near
as can be published again (to ``jobs.dead``, say):

- a short string's bytes that are not UTF-8 become ``\\xff`` escapes (Python's
  ``backslashreplace``: two names that differ in bytes that are not UTF-8 stay two);
- a timestamp outside the dates Python holds becomes absent (``None``);
- a table or an array nested deeper than :data:`MAX_DEPTH` becomes ``None`` (it is skipped whole,
  by its length);
- the "more flags" bit of the property flags is ignored, as RabbitMQ ignores it (AMQP 0-9-1 has
  14 properties, all in the first word).

The message then reaches the service's own reading, which judges it like any other (its body
decides). pamqp already reads a long string that is not UTF-8 as bytes.
"""

import datetime
import struct

from pamqp import common, decode, header

MAX_DEPTH = 32  # tables and arrays within tables; a peer's trace headers nest two or three

_BYTE = struct.Struct(">B")
_WORD = struct.Struct(">H")
_INTEGER = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")


def short_str(value: bytes) -> tuple[int, str]:
    try:
        (length,) = _BYTE.unpack_from(value)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "backslashreplace")


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


def _length(value: bytes) -> int:
    try:
        (length,) = _INTEGER.unpack_from(value)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err
    return int(length)


def _embedded(value: bytes, depth: int) -> tuple[int, common.FieldValue]:
    """pamqp's ``embedded_value``, passing the depth down to tables and arrays."""
    kind = value[:1]
    if kind == b"F":
        consumed, table = _table(value[1:], depth + 1)
        return consumed + 1, table
    if kind == b"A":
        consumed, array = _array(value[1:], depth + 1)
        return consumed + 1, array
    return decode.embedded_value(value)


def _table(value: bytes, depth: int) -> tuple[int, common.FieldTable | None]:
    """pamqp's ``field_table``, but for the names (read as :func:`short_str` reads) and the
    depth."""
    end = 4 + _length(value)
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    if depth > MAX_DEPTH:
        return end, None
    table: common.FieldTable = {}
    offset = 4
    while offset < end:
        key_end = offset + 1 + value[offset]
        if key_end > end:
            raise ValueError("Field table key length exceeds data")
        _, key = short_str(value[offset:key_end])
        consumed, table[key] = _embedded(value[key_end:], depth)
        offset = key_end + consumed
    return end, table


def _array(value: bytes, depth: int) -> tuple[int, common.FieldArray | None]:
    """pamqp's ``field_array``, but for the depth."""
    end = 4 + _length(value)
    if end > len(value):
        raise ValueError("Field array length exceeds available data")
    if depth > MAX_DEPTH:
        return end, None
    array: common.FieldArray = []
    offset = 4
    while offset < end:
        consumed, item = _embedded(value[offset:], depth)
        offset += consumed
        array.append(item)
    return offset, array


def field_table(value: bytes) -> tuple[int, common.FieldTable | None]:
    return _table(value, 1)


def field_array(value: bytes) -> tuple[int, common.FieldArray | None]:
    return _array(value, 1)


def content_flags(data: bytes) -> tuple[int, int]:
    """The property flags of a content header: one word, its "more flags" bit ignored."""
    try:
        (flags,) = _WORD.unpack_from(data)
    except struct.error as err:
        raise ValueError("Content header flags are truncated") from err
    return 2, flags & 0xFFFE


def tolerate_undecodable_fields() -> None:
    """Put the decoders above in pamqp's place (idempotent; process-wide, as pamqp's are)."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["timestamp"] = timestamp
    decode.METHODS["table"] = field_table
    decode.METHODS["array"] = field_array
    decode.TABLE_MAPPING[b"T"] = timestamp
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.TABLE_MAPPING[b"A"] = field_array
    # setattr: mypy refuses an assignment to a method.
    setattr(header.ContentHeader, "_get_flags", staticmethod(content_flags))  # noqa: B010
