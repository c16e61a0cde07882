"""``sleep``: waits ``seconds`` (0 < n ≤ 300)."""

import asyncio
from typing import Any

from pydantic import ValidationError

from cloudtask.contracts.job_types import SleepPayload
from cloudtask.errors import PermanentFailure


async def run(payload: Any) -> str:
    try:
        seconds = SleepPayload.model_validate(payload).seconds
    except ValidationError as exc:
        raise PermanentFailure(f"invalid sleep payload: {exc.errors()[0]['msg']}") from None
    await asyncio.sleep(seconds)
    shown = int(seconds) if float(seconds).is_integer() else seconds
    return f"Slept for {shown} seconds"
