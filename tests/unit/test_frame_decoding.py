"""pamqp's decoders as the services install them: fields RabbitMQ passes on unread are read."""

import datetime
import struct

import pytest
from pamqp import decode, encode, header

from cloudtask.broker.frame_decoding import MAX_DEPTH, tolerate_undecodable_fields
from tests.careless_peer import headers_properties, nested_headers


@pytest.fixture(autouse=True)
def tolerant(monkeypatch: pytest.MonkeyPatch) -> None:
    # pamqp's own tables come back after each test: a test that needs the services' decoders
    # must get them from the services, not from a test that ran before it.
    monkeypatch.setattr(decode, "METHODS", dict(decode.METHODS))
    monkeypatch.setattr(decode, "TABLE_MAPPING", dict(decode.TABLE_MAPPING))
    monkeypatch.setattr(
        header.ContentHeader, "_get_flags", header.ContentHeader.__dict__["_get_flags"]
    )
    tolerate_undecodable_fields()


def test_a_short_string_that_is_not_utf8_is_read_with_escapes() -> None:
    assert decode.by_type(b"\x04ab\xffc", "shortstr") == (5, "ab\\xffc")
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
        {"inner": {"\\xff\\xfe": 7, "t": None}, "list": [None]},
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


def test_two_names_that_are_not_utf8_stay_two_names() -> None:
    names = b"\x01\xffI" + struct.pack(">i", 1) + b"\x01\xfeI" + struct.pack(">i", 2)
    data = struct.pack(">I", len(names)) + names
    assert decode.by_type(data, "table")[1] == {"\\xff": 1, "\\xfe": 2}


def test_tables_and_arrays_nested_past_the_limit_are_read_as_absent_and_skipped_whole() -> None:
    deep = nested_headers(3000)  # recursing through it raised RecursionError
    consumed, table = decode.by_type(deep + b"rest", "table")
    assert consumed == len(deep)
    for _ in range(MAX_DEPTH - 1):
        assert isinstance(table, dict)
        table = table["n"]
    assert table == {"n": None}
    array = struct.pack(">I", 0)
    for _ in range(3000):
        array = struct.pack(">I", len(array) + 1) + b"A" + array
    consumed, value = decode.by_type(array, "array")
    assert consumed == len(array)
    for _ in range(MAX_DEPTH - 1):
        assert isinstance(value, list)
        (value,) = value
    assert value == [None]


def test_a_content_header_with_the_more_flags_bit_is_read_as_rabbitmq_reads_it() -> None:
    body_size = struct.pack(">HxxQ", 60, 7)
    read = header.ContentHeader()
    read.unmarshal(body_size + struct.pack(">H", 0x0001))
    assert (read.body_size, read.properties.headers) == (7, None)
    read = header.ContentHeader()
    properties = bytearray(headers_properties(nested_headers(2)))
    properties[1] |= 0x01
    read.unmarshal(body_size + bytes(properties))
    assert read.properties.content_type == "application/json"
    assert read.properties.headers == {"n": {}}
    assert read.properties.delivery_mode == 2
