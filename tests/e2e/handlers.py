"""Job handlers that end-to-end tests load into workers with ``--import tests.e2e.handlers``."""

import asyncio
import time
from typing import Any

from cloudtask import job_handler


@job_handler("e2e.double")
def double(payload: Any) -> Any:
    return {"doubled": payload["n"] * 2}


@job_handler("e2e.block")
async def block(payload: Any) -> str:
    await asyncio.sleep(float(payload.get("seconds", 600)))
    return "finished"


@job_handler("e2e.hang")
async def hang(payload: Any) -> str:
    # Blocks the worker's event loop: it can neither time the job out nor renew its leases.
    time.sleep(float(payload.get("seconds", 30)))  # noqa: ASYNC251 - hanging is the point
    return "woke up"
