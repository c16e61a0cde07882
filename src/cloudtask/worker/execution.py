"""Running one handler under the job's timeout, and turning what happened into an outcome.

Async handlers run on the event loop, sync ones in threads of their own (``threads.py``). The
timeout does not wait for a handler that ignores cancellation: the attempt is reported as timed
out at once, and the stray task or thread is left to finish on its own (counted in metrics).
"""

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.job_types import MAX_RESULT_BYTES
from cloudtask.errors import PermanentFailure
from cloudtask.worker.registry import Handler

# A handler that waits exactly its timeout (``sleep`` of 300 s under the default 300) ends a few
# milliseconds past it, as timers fire late; it is not stopped for that.
TIMEOUT_SLACK = 0.05
# How long an async handler stopped at its timeout has to end before it counts as left running.
STOP_GRACE = 0.1


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended; ``kind`` is a bounded metrics label."""

    kind: str  # completed | failed | timeout | cancelled | unknown_type
    result: Any = None
    error: str | None = None
    retryable: bool = False
    exception: BaseException | None = None  # for the worker's log: the class and the traceback

    @property
    def completed(self) -> bool:
        return self.kind == "completed"


def unknown_type(job_type: str) -> Outcome:
    return Outcome("unknown_type", error=sendable(f"unknown job type: {job_type}"))


CANCELLED = Outcome("cancelled", error="cancelled")


class Span:
    """When the handler itself began and returned (``time.perf_counter()``), read where it runs.

    The attempt's time is the handler's: a call that waited for its first turn of a busy event
    loop, or whose end the loop noticed late, did not run for that long.
    """

    __slots__ = ("began", "ended")

    def __init__(self) -> None:
        self.began: float | None = None
        self.ended: float | None = None


@dataclass(frozen=True)
class Run:
    """A handler started: ``future`` ends with its result (cancelling it stops an async handler,
    or a sync one not yet begun); ``thread_call`` is a sync handler's call in its thread, which
    goes on until the handler returns."""

    future: "asyncio.Future[Any]"
    span: Span
    thread_call: "concurrent.futures.Future[Any] | None" = None

    @property
    def still_running(self) -> bool:
        """Whether the handler itself goes on, its future done or not."""
        return not self.future.done() or (
            self.thread_call is not None and not self.thread_call.done()
        )


class HandlerInterrupted(Exception):
    """An async handler raised ``KeyboardInterrupt``, ``SystemExit`` or a ``CancelledError`` no one
    asked for. On the event loop the first two would stop the worker, and the third would read
    as a cancelled job; each fails the attempt instead, as any other exception does."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(str(raised) or type(raised).__name__)


async def _guarded(handler: Handler, payload: Any, span: Span) -> Any:
    span.began = time.perf_counter()
    try:
        return await handler.function(payload)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the worker stopped it: timeout or cancel
            raise
        raise HandlerInterrupted(exc) from exc
    except (KeyboardInterrupt, SystemExit) as exc:
        raise HandlerInterrupted(exc) from exc
    finally:
        span.ended = time.perf_counter()


def _timed(function: Callable[[Any], Any], payload: Any, span: Span) -> Any:
    span.began = time.perf_counter()
    try:
        return function(payload)
    finally:
        span.ended = time.perf_counter()


def start(handler: Handler, payload: Any, executor: Executor) -> Run:
    """Start the handler."""
    span = Span()
    if handler.is_async:
        return Run(asyncio.ensure_future(_guarded(handler, payload, span)), span)
    call = executor.submit(contextvars.copy_context().run, _timed, handler.function, payload, span)
    return Run(asyncio.wrap_future(call), span, call)


async def finish(run: Run, timeout: float, *, since: float) -> Outcome:
    """Wait for the handler until ``timeout`` seconds after it began and describe the outcome.

    ``since`` is a ``time.perf_counter()`` reading taken as the handler was started, which
    stands for when it began until it says so itself. A handler that blocks the event loop
    cannot be stopped at its timeout; if it ran past it, the attempt counts as timed out all the
    same, whatever it returned.
    """
    future, span = run.future, run.span
    limit = timeout + TIMEOUT_SLACK
    began = since if span.began is None else span.began
    while not await settled_within(future, max(0.0, began + limit - time.perf_counter())):
        if span.began is not None and span.began > began:
            began = span.began  # it began late (a busy loop, a new thread): its time runs from then
            continue
        if not _returned_within(span, limit):
            future.cancel()
            # An async handler stops at its next turn of the loop, or a few later (its finally
            # blocks may await); only one still going after that is left running (abandoned).
            await settled_within(future, STOP_GRACE)
            return _timed_out(timeout)
        # It returned in time; its future is set once the loop gets to it (a thread's result
        # is handed over through the loop), which may be after the deadline's timer.
        await asyncio.wait((future,))
        break
    ended: concurrent.futures.Future[Any] | asyncio.Future[Any] = future
    if future.cancelled():
        call = run.thread_call
        if call is None or not call.done() or call.cancelled():
            return CANCELLED
        # A sync handler that had returned as its run was cancelled, its result still on its
        # way to the loop: what it returned stands (it ran to its end).
        ended = call
    exc = ended.exception()
    if span.ended is not None and not _returned_within(span, limit):
        return _timed_out(timeout)
    if exc is not None:
        return failure(exc)
    return _completed(ended.result())


async def settled_within(run: "asyncio.Future[Any]", timeout: float) -> bool:
    """Whether ``run`` is done within ``timeout`` seconds; it is not cancelled either way.

    ``asyncio.wait`` for one future, without its sets and counters, and without waiting a turn
    of the loop for a future already done: twice per job, and most jobs are done by the second.
    """
    if run.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(timeout, wake)
    run.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        run.remove_done_callback(wake)
    return run.done()


def _returned_within(span: Span, limit: float) -> bool:
    return span.began is not None and span.ended is not None and span.ended - span.began <= limit


def _timed_out(timeout: float) -> Outcome:
    unit = "second" if timeout == 1 else "seconds"
    return Outcome("timeout", error=f"timed out after {_seconds(timeout)} {unit}", retryable=True)


def failure(exc: BaseException) -> Outcome:
    # The job's error is the exception's message, as a client reads it; the worker's log has the
    # class and the traceback. An exception without a message is named by its class.
    error = sendable(str(exc)) or type(exc).__name__
    return Outcome(
        "failed", error=error, retryable=not isinstance(exc, PermanentFailure), exception=exc
    )


def _completed(result: Any) -> Outcome:
    try:
        text = jsoncodec.dumps(result)
    except (TypeError, ValueError, RecursionError):  # escaping, the delivery would run again
        if jsoncodec.nests_deeper(result):  # the reason, whatever else it holds
            return _too_deep()
        return Outcome("failed", error="the handler's result is not JSON-serializable")
    if jsoncodec.has_non_finite(result, text):  # else silently written as null
        return Outcome("failed", error="the handler's result holds a NaN or an infinity")
    if len(text) > MAX_RESULT_BYTES:
        return Outcome(
            "failed", error=f"the handler's result is larger than {MAX_RESULT_BYTES} bytes"
        )
    # Deeper than this, the results-processor could not parse the report (see jsoncodec).
    if jsoncodec.too_deep(result, text):
        return _too_deep()
    return Outcome("completed", result=result)


def _too_deep() -> Outcome:
    return Outcome(
        "failed",
        error=f"the handler's result is nested more than {jsoncodec.MAX_DEPTH} levels deep",
    )


def sendable(text: str) -> str:
    """``text`` as UTF-8 can carry it: an exception's message may hold lone surrogates (from
    undecodable bytes), which no JSON encoder writes, and the attempt must still be reported."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
