"""Job handlers that end-to-end tests load into workers with ``--import tests.e2e.handlers``."""

import asyncio
import os
import time
from typing import Any

from cloudtask import job_handler


@job_handler("e2e.double")
def double(payload: Any) -> Any:
    return {"doubled": payload["n"] * 2}


_calls: dict[str, int] = {}


@job_handler("e2e.flaky")
def flaky(payload: Any) -> Any:
    """Fails the first time it sees a key (in this worker process), then succeeds."""
    key = str(payload["key"])
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] == 1:
        raise RuntimeError("first attempt fails")
    return {"calls": _calls[key]}


@job_handler("e2e.block")
async def block(payload: Any) -> str:
    await asyncio.sleep(float(payload.get("seconds", 600)))
    return "finished"


@job_handler("e2e.hang")
async def hang(payload: Any) -> str:
    # Blocks the worker's event loop: it can neither time the job out nor renew its leases.
    time.sleep(float(payload.get("seconds", 30)))  # noqa: ASYNC251 - hanging is the point
    return "woke up"


@job_handler("e2e.crash")
def crash(payload: Any) -> Any:
    """Kills its worker, as a segfault or the kernel's OOM killer would."""
    os._exit(70)


@job_handler("e2e.crash_later")
async def crash_later(payload: Any) -> Any:
    """Kills its worker once it has run a while: long enough to be announced, its delivery
    acknowledged, so that only its lease tells that it was lost."""
    await asyncio.sleep(float(payload.get("seconds", 0.3)))
    os._exit(70)
