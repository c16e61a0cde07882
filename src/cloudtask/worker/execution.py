"""Running one handler under the job's timeout, and turning what happened into an outcome.

Async handlers run on the event loop, sync ones in a thread pool. The timeout does not wait for a
handler that ignores cancellation: the attempt is reported as timed out at once, and the stray
task or thread is left to finish on its own (counted in metrics).
"""

import asyncio
import contextvars
import functools
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from cloudtask.contracts import jsoncodec
from cloudtask.errors import PermanentFailure
from cloudtask.worker.registry import Handler

MAX_RESULT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended; ``kind`` is a bounded metrics label."""

    kind: str  # completed | failed | timeout | cancelled | unknown_type
    result: Any = None
    error: str | None = None
    retryable: bool = False

    @property
    def completed(self) -> bool:
        return self.kind == "completed"


def unknown_type(job_type: str) -> Outcome:
    return Outcome("unknown_type", error=f"unknown job type: {job_type}")


CANCELLED = Outcome("cancelled", error="cancelled")


def start(handler: Handler, payload: Any, executor: Executor) -> "asyncio.Future[Any]":
    """Start the handler; the returned future ends with its result."""
    if handler.is_async:
        return asyncio.ensure_future(handler.function(payload))
    call = functools.partial(contextvars.copy_context().run, handler.function, payload)
    return asyncio.get_running_loop().run_in_executor(executor, call)


async def finish(run: "asyncio.Future[Any]", timeout: float) -> Outcome:
    """Wait for ``run`` at most ``timeout`` seconds and describe the outcome."""
    done, _ = await asyncio.wait({run}, timeout=timeout)
    if not done:
        run.cancel()
        return Outcome(
            "timeout", error=f"timed out after {_seconds(timeout)} seconds", retryable=True
        )
    if run.cancelled():
        return CANCELLED
    exc = run.exception()
    if exc is not None:
        return failure(exc)
    return _completed(run.result())


def failure(exc: BaseException) -> Outcome:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, PermanentFailure):
        return Outcome("failed", error=message, retryable=False)
    return Outcome("failed", error=f"{type(exc).__name__}: {message}", retryable=True)


def _completed(result: Any) -> Outcome:
    try:
        size = len(jsoncodec.dumps(result))
    except (TypeError, ValueError):
        return Outcome("failed", error="the handler's result is not JSON-serializable")
    if size > MAX_RESULT_BYTES:
        return Outcome(
            "failed", error=f"the handler's result is larger than {MAX_RESULT_BYTES} bytes"
        )
    return Outcome("completed", result=result)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
