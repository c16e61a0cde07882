"""Strict JSON: what CloudTask accepts as JSON and how it writes it.

Python's parser accepts ``NaN`` and ``Infinity`` and turns ``1e400`` into infinity; none of those is
JSON, so they are refused here. Integers keep their exact value (orjson would turn big ones into
floats), so a payload is stored as submitted. Writing uses orjson for speed and falls back to the
standard library for the integers orjson cannot hold.
"""

import json
import math
from typing import Any

import orjson


class InvalidJSON(json.JSONDecodeError):
    """The text is not valid JSON."""

    def __init__(self, message: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(message, doc, pos)


def _refuse_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJSON(f"number {text} is out of range")
    return value


def _exact_int(text: str) -> int:
    # Python refuses to convert integers of more than 4300 digits (a quadratic-time guard).
    try:
        return int(text)
    except ValueError:
        raise InvalidJSON(f"integer of {len(text)} digits is too long") from None


_decoder = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_exact_int
)


def loads(data: bytes | str) -> Any:
    """Parse JSON text, raising :class:`InvalidJSON` for anything that is not strict JSON."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value, end = _decoder.raw_decode(text, _skip_space(text, 0))
    except InvalidJSON:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSON(exc.msg, exc.doc, exc.pos) from None
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8") from None
    if _skip_space(text, end) != len(text):
        raise InvalidJSON(f"extra data after the JSON value at position {end}")
    return value


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_str(value: Any) -> str:
    return dumps(value).decode()
