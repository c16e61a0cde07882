"""``echo``: the result is the payload."""

from typing import Any


async def run(payload: Any) -> Any:
    return payload
