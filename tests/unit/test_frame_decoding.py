"""pamqp's decoders as the services install them: fields RabbitMQ passes on unread are read."""

import datetime
import struct

import pytest
from pamqp import decode, encode

from cloudtask.broker.frame_decoding import tolerate_undecodable_fields


@pytest.fixture(autouse=True)
def tolerant() -> None:
    tolerate_undecodable_fields()


def test_a_short_string_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    assert decode.by_type(b"\x04ab\xffc", "shortstr") == (5, "ab\ufffdc")
    assert decode.by_type(b"\x03abc", "shortstr") == (4, "abc")


def test_a_timestamp_past_any_date_is_read_as_absent_and_a_date_as_a_date() -> None:
    assert decode.by_type(struct.pack(">Q", 2**63), "timestamp") == (8, None)
    when = datetime.datetime(2026, 11, 30, 1, 2, 3, tzinfo=datetime.UTC)
    assert decode.by_type(encode.timestamp(when), "timestamp") == (8, when)


def test_a_table_reads_names_that_are_not_utf8_and_far_timestamps_at_any_depth() -> None:
    inner = b"\x02\xff\xfeI" + struct.pack(">i", 7)
    inner += b"\x01tT" + struct.pack(">Q", 2**63)
    outer = b"\x05innerF" + struct.pack(">I", len(inner)) + inner
    outer += b"\x04listA" + struct.pack(">I", 9) + b"T" + struct.pack(">Q", 2**63)
    data = struct.pack(">I", len(outer)) + outer + b"rest"
    assert decode.by_type(data, "table") == (
        len(data) - 4,
        {"inner": {"\ufffd\ufffd": 7, "t": None}, "list": [None]},
    )


def test_what_pamqp_writes_reads_back_as_it_was() -> None:
    table = {"a": 1, "b": "text", "c": {"d": True}, "e": [1, "x"], "ä": 2.5}
    assert decode.by_type(encode.field_table(table), "table")[1] == table


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no length
        struct.pack(">I", 10) + b"\x01a",  # longer than the frame
        struct.pack(">I", 3) + b"\x05ab",  # a name running past the table
    ],
)
def test_a_table_cut_short_is_refused_as_pamqp_refuses_it(data: bytes) -> None:
    with pytest.raises(ValueError, match="data"):
        decode.by_type(data, "table")
