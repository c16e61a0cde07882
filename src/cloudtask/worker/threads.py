"""The threads that sync handlers run in: one for each call in progress, idle ones kept for reuse.

A thread cannot be stopped from outside, so a sync handler that runs past its timeout, or whose
job is cancelled, keeps its thread until it returns. In a fixed pool (``ThreadPoolExecutor``)
such a call holds one of the pool's threads meanwhile, and the jobs after it wait for a thread
with their timeout already running: they failed as timed out without having run. Here a call
that finds no idle thread starts one, so an abandoned call delays no other; how many calls run at
once is the worker's slots' business, not the threads'.

The threads are daemons: a handler that never returns does not keep the process from exiting.
"""

import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class HandlerThreads(Executor):
    def __init__(self, *, keep_idle: int, name: str, idle_seconds: float = 60.0) -> None:
        self._keep_idle = keep_idle
        self._name = name
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._calls: deque[_Call] = deque()
        self._idle = 0  # threads waiting for a call
        self._numbers = itertools.count(1)
        self._shut = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot run a handler after the worker's threads shut down")
            self._calls.append((future, fn, args, kwargs))
            if len(self._calls) > self._idle:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{next(self._numbers)}", daemon=True
                )
                thread.start()
            else:
                self._wake.notify()
        return future

    def _serve(self) -> None:
        while True:
            call = self._next_call()
            if call is None:
                return
            future, fn, args, kwargs = call
            del call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)
            del future, fn, args, kwargs  # nothing of a finished call outlives it while idle

    def _next_call(self) -> _Call | None:
        with self._lock:
            while not self._calls:
                if self._shut or self._idle >= self._keep_idle:
                    return None
                self._idle += 1
                try:
                    # A call may arrive just as the wait times out: the queue decides, not the
                    # wait's result.
                    self._wake.wait(self._idle_seconds)
                finally:
                    self._idle -= 1
                if not self._calls:
                    return None  # idle for the whole wait
            return self._calls.popleft()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let idle threads end; with ``cancel_futures``, cancel the calls not yet started.
        Running calls are never waited for (``wait`` is accepted for ``Executor``'s sake)."""
        del wait
        with self._lock:
            self._shut = True
            calls = list(self._calls) if cancel_futures else []
            if cancel_futures:
                self._calls.clear()
            self._wake.notify_all()
        for future, *_ in calls:
            future.cancel()
