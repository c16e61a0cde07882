"""Strict JSON: what CloudTask accepts as JSON and how it writes it.

Python's parser accepts ``NaN`` and ``Infinity`` and turns ``1e400`` into infinity; none of those is
JSON, so they are refused here. Integers keep their exact value (orjson would turn big ones into
floats), so a payload is stored as submitted. Both ways use orjson for speed. Reading falls back to
the standard library where orjson would differ: integers beyond 64 bits, and every error message;
writing hands orjson those integers already written.

Two more limits keep every accepted document one that the rest of the system can carry: no string
may hold an unpaired UTF-16 surrogate (``"\\ud800"`` is valid JSON text but not Unicode, and no
UTF-8 encoder writes it), and nesting is at most :data:`MAX_DEPTH` levels (the message parsers of
the worker and the results-processor stop at about 250, so a deeper payload would be accepted but
never run).
"""

import json
import math
import re
from typing import Any
from uuid import UUID

import orjson


class InvalidJSON(json.JSONDecodeError):
    """The text is not valid JSON."""

    def __init__(self, message: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(message, doc, pos)


class TooDeep(InvalidJSON):
    """Arrays and objects nest deeper than allowed."""


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


MAX_DEPTH = 128
"""The deepest nesting of arrays and objects a document may have."""

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Every digit as "0", every other byte as " ": nineteen zeros in a row are perhaps an integer beyond
# 64 bits, which orjson would read as a float. Forty times faster than a regular expression.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGITS = b"0" * 19

_decoder = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_exact_int
)


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text, raising :class:`InvalidJSON` for anything that is not strict JSON or
    nested deeper than ``max_depth``."""
    # orjson first: six times faster on a batch's body. It refuses all that is refused below
    # (NaN, infinities, unpaired surrogates, bad UTF-8, trailing data) and reads the rest to the
    # same values, but for integers beyond 64 bits; so text that could hold one, and whatever
    # orjson refuses, takes the standard library's path, which also words the error.
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZEROS):
        try:
            value = orjson.loads(data)
        except ValueError:  # orjson's JSONDecodeError, or a str that is not Unicode
            pass
        else:
            if too_deep(value, data, max_depth):
                raise TooDeep(f"nested more than {max_depth} levels deep")
            return value
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value, end = _decoder.raw_decode(text, _skip_space(text, 0))
    except InvalidJSON:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSON(exc.msg, exc.doc, exc.pos) from None
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8") from None
    except RecursionError:
        raise TooDeep(f"nested more than {max_depth} levels deep") from None
    if _skip_space(text, end) != len(text):
        raise InvalidJSON(f"extra data after the JSON value at position {end}")
    # Both checks walk the value only when the text could break them: rare, and cheap otherwise.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise InvalidJSON("a string holds an unpaired UTF-16 surrogate, which is not Unicode")
    if too_deep(value, text, max_depth):
        raise TooDeep(f"nested more than {max_depth} levels deep")
    return value


def too_deep(value: Any, text: str | bytes, max_depth: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than ``max_depth`` levels deep in ``value``, whose
    JSON is ``text``: walked only when ``text`` holds enough brackets to be (rare)."""
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    if brackets <= max_depth:
        return False
    return nests_deeper(value, max_depth)


def nests_deeper(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than ``max_depth`` levels deep in ``value`` (a value
    holding itself does)."""
    # A tuple is written as an array: a handler's result may hold them.
    level: list[Any] = [value]
    for _ in range(max_depth):
        level = [
            child
            for item in level
            if isinstance(item, (list, tuple, dict))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (list, tuple, dict))
        ]
        if not level:
            return False
    return True


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON. A NaN or an infinity is written as ``null`` (orjson's
    way; see :func:`has_non_finite` to refuse them instead), except in a value nested deeper
    than orjson writes (255 levels) or holding itself, which the standard library writes or
    refuses (``ValueError``, ``TypeError`` for what it cannot write, such as a UUID)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        # orjson writes no integer beyond 64 bits (those go in as text already written) and no
        # key that is not a string (those are written as strings, as the standard library
        # does: a handler's {1: "a"} is {"1": "a"}). The rest is still orjson's, so a number is
        # written the same whatever is beside it: the standard library, used here before,
        # wrote 1e-05 where orjson writes 0.00001, and a payload's size, counted in this
        # writing, depended on whether it also held a big integer.
        return orjson.dumps(_big_ints_written(value), option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, RecursionError):
        # Nested deeper than orjson writes (255 levels), or holding itself: the standard
        # library's answer (written, or a ValueError naming the circular reference).
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()


def _big_ints_written(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # int's own text: a subclass may write itself otherwise.
        return value if _INT_MIN <= value <= _UINT_MAX else orjson.Fragment(int.__repr__(value))
    if isinstance(value, dict):
        return {_key(key): _big_ints_written(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_big_ints_written(item) for item in value]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, float) and not math.isfinite(key):
        raise ValueError(f"a key of {key!r} is not JSON")  # as the standard library refuses it
    if isinstance(key, int) and not isinstance(key, bool) and not _INT_MIN <= key <= _UINT_MAX:
        return int.__repr__(key)
    return key


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
"""The integers orjson writes itself."""


def has_non_finite(value: Any, text: bytes) -> bool:
    """Whether ``value``, written as ``text`` by :func:`dumps`, holds a NaN or an infinity
    (which JSON cannot carry): walked only when ``text`` holds a ``null`` to be one."""
    return b"null" in text and holds_non_finite(value)


def holds_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def whole_as_int(value: float) -> float | int:
    """A number as the API writes it: ``300``, not ``300.0``, when it is whole (as stored in a
    float column), so readers that want an integer there get one."""
    return int(value) if float(value).is_integer() else value


def uuid_value(value: UUID) -> UUID | str:
    """``value`` as :func:`dumps` should be given it: orjson writes a ``uuid.UUID`` itself, in a
    quarter of the time ``str()`` takes (a batch has thousands of ids), but refuses subclasses
    such as the ids asyncpg returns, which go as text."""
    return value if type(value) is UUID else str(value)


def dumps_str(value: Any) -> str:
    return dumps(value).decode()
