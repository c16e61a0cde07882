"""Job handlers by type name, and the ``job_handler`` decorator that user modules register with.

A handler takes the job's payload and returns a JSON-serializable result; it may be a coroutine
function (run on the event loop) or a plain function (run in a thread, so it never blocks others)::

    from cloudtask import job_handler

    @job_handler("resize-image")
    def resize(payload):
        ...
        return {"width": 100}

``cloudtask worker --import myapp.jobs`` imports the module, which registers its handlers.
"""

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from cloudtask.contracts.job_types import TYPE_PATTERN

HandlerFunction = Callable[[Any], Any]
F = TypeVar("F", bound=HandlerFunction)


@dataclass(frozen=True)
class Handler:
    type: str
    function: HandlerFunction
    is_async: bool


class RegistrationError(ValueError):
    """A handler that cannot be registered: a type name outside the pattern, or one taken."""


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, job_type: str, function: HandlerFunction) -> None:
        if not re.fullmatch(TYPE_PATTERN, job_type):
            raise RegistrationError(
                f"job type {job_type!r} must be 1-64 characters of a-z 0-9 _ . -"
            )
        existing = self._handlers.get(job_type)
        if existing is not None and existing.function is not function:
            raise RegistrationError(f"a handler for job type {job_type!r} is already registered")
        self._handlers[job_type] = Handler(job_type, function, _is_async(function))

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def merged(self, other: "HandlerRegistry") -> "HandlerRegistry":
        combined = HandlerRegistry()
        for handler in [*self, *other]:
            combined.register(handler.type, handler.function)
        return combined

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __contains__(self, job_type: str) -> bool:
        return job_type in self._handlers


def _is_async(function: HandlerFunction) -> bool:
    # A callable object counts as async when its __call__ is a coroutine function.
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - looking for a coroutine method
    )


user_handlers = HandlerRegistry()
"""Handlers registered by user modules through :func:`job_handler`."""


def job_handler(job_type: str) -> Callable[[F], F]:
    """Register the decorated function as the handler of ``job_type``."""

    def decorate(function: F) -> F:
        user_handlers.register(job_type, function)
        return function

    return decorate
