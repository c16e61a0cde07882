"""Strict JSON in, compact JSON out."""

import json
import uuid

import pytest

from cloudtask.contracts.jsoncodec import InvalidJSON, dumps, dumps_str, loads, uuid_value


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        '{"x": NaN}',
        "[Infinity]",
        "1e400",
        "-1e400",
        '{"x": 1e999}',
    ],
)
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(InvalidJSON):
        loads(text)


@pytest.mark.parametrize("text", ["[1] x", "{}{}", "1 2", '"a" "b"', "null,"])
def test_trailing_data_is_refused(text: str) -> None:
    with pytest.raises(InvalidJSON, match="extra data"):
        loads(text)


@pytest.mark.parametrize("data", [b'"\xff"', b"\xc3\x28", b'{"a": "\xed\xa0\x80"}'])
def test_invalid_utf8_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidJSON, match="UTF-8"):
        loads(data)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", "{'a': 1}", "01", "tru"])
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidJSON):
        loads(text)


def test_invalid_json_is_a_value_error_with_a_position() -> None:
    with pytest.raises(ValueError, match="Expecting") as caught:
        loads('{"a": }')
    assert isinstance(caught.value, json.JSONDecodeError)
    assert caught.value.pos == 6


def test_huge_integers_keep_their_exact_value() -> None:
    big = 2**200 + 1
    assert loads(f'{{"n": {big}, "m": -{big}}}') == {"n": big, "m": -big}
    assert loads("9" * 4000) == int("9" * 4000)


def test_an_integer_too_long_to_convert_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(InvalidJSON, match="too long"):
        loads("[" + "1" * 5000 + "]")


def test_surrounding_whitespace_and_bytes_input_are_accepted() -> None:
    assert loads(b' \n{"a": [1, 2.5, "\xc3\xa9", true, null]}\t\r\n') == {
        "a": [1, 2.5, "é", True, None]
    }


def test_tiny_floats_are_numbers_not_errors() -> None:
    assert loads("1e-400") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"jobId": "x", "payload": {"nested": [1, 2.5, "é", "🎉", False]}},
        [2**64, -(2**70), 2**63 - 1],
        {"big": 10**40, "text": "a\u2028b"},
        "",
    ],
)
def test_dumps_round_trips_through_loads(value: object) -> None:
    assert loads(dumps(value)) == value
    assert loads(dumps_str(value)) == value


def test_dumps_writes_big_integers_exactly() -> None:
    assert dumps(2**100) == b"1267650600228229401496703205376"
    assert dumps({"n": -(2**70)}) == b'{"n":-1180591620717411303424}'


def test_a_number_is_written_the_same_beside_a_big_integer() -> None:
    # A payload's size is counted in this writing: one integer beyond 64 bits beside them must
    # not change how the other numbers are written (1e-05 and 0.00001 differ by two bytes).
    alone = dumps([1e-5, 1e15, 2**63 - 1, -(2**63), 2**64 - 1])
    beside = dumps([1e-5, 1e15, 2**63 - 1, -(2**63), 2**64 - 1, 2**64])
    assert beside == alone[:-1] + b",18446744073709551616]"
    assert dumps({"a": {"b": [2**70, 0.1]}}) == b'{"a":{"b":[1180591620717411303424,0.1]}}'


def test_what_orjson_cannot_write_beside_a_big_integer_is_the_standard_librarys_answer() -> None:
    circular: list[object] = [2**70]
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular"):
        dumps(circular)
    deep: list[object] = [2**70]
    for _ in range(300):  # deeper than orjson writes
        deep = [deep]
    assert dumps(deep) == b"[" * 300 + b"[1180591620717411303424]" + b"]" * 300
    with pytest.raises(ValueError, match="not JSON"):
        dumps({float("nan"): 1})


def test_a_big_integer_is_written_as_int_writes_it_whatever_its_class() -> None:
    class Named(int):
        def __str__(self) -> str:
            return "not a number"

    assert dumps({"n": Named(2**70), Named(2**70): 1}) == (
        b'{"n":1180591620717411303424,"1180591620717411303424":1}'
    )


def test_keys_that_are_not_strings_are_written_as_strings() -> None:
    # As the standard library writes them: a handler may return a dict keyed by integers.
    assert dumps({1: "a", 2**70: "b", False: "c", None: "d"}) == (
        b'{"1":"a","1180591620717411303424":"b","false":"c","null":"d"}'
    )


def test_dumps_is_compact_utf8() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert dumps({"a": 2**65, "b": "é"}) == '{"a":36893488147419103232,"b":"é"}'.encode()
    assert dumps_str([1, 2]) == "[1,2]"


@pytest.mark.parametrize(
    "text",
    [
        "[9223372036854775807, -9223372036854775808, 18446744073709551615]",
        "[9223372036854775808, -9223372036854775809, 18446744073709551616]",
        '{"n": 123456789012345678901234567890, "s": "1234567890123456789"}',
        "[0.1, 1e22, -1.5e-7, 5e-324, 2.2250738585072011e-308, 1.7976931348623157e308]",
        '{"a": 1, "b": 2, "a": 3}',
        '"\\u00e9\\n\\ud83d\\ude00\\u2028"',
        " \t\r\n[-0, -0.0, 1E5, 1e-400] \n",
    ],
)
def test_values_are_those_of_the_standard_parser(text: str) -> None:
    # The fast path (orjson) must read exactly what the strict standard-library path reads,
    # big integers included; for bytes and str alike.
    expected = json.loads(text)
    for data in (text, text.encode()):
        value = loads(data)
        assert value == expected
        assert json.dumps(value) == json.dumps(expected)  # the same types: 1 is not 1.0


@pytest.mark.parametrize("data", ["[" * 129 + "]" * 129, b"[" * 129 + b"]" * 129])
def test_nesting_deeper_than_the_limit_is_refused(data: str | bytes) -> None:
    with pytest.raises(InvalidJSON, match="nested more than 128"):
        loads(data)
    assert loads(data[1:-1]) == json.loads(data[1:-1])


def test_a_str_holding_a_lone_surrogate_is_read_as_before() -> None:
    # Not Unicode, so orjson refuses it; the standard library reads it as it did.
    assert loads('["\ud800"]') == ["\ud800"]


class _DriverUUID(uuid.UUID):
    """Like asyncpg's UUID: a subclass, which orjson does not write by itself."""


def test_ids_are_written_as_their_text_whatever_their_class() -> None:
    job_id = uuid.uuid4()
    for value in (job_id, _DriverUUID(int=job_id.int)):
        assert dumps({"id": uuid_value(value)}) == b'{"id":"%s"}' % str(job_id).encode()
