"""Running an ASGI app with uvicorn inside CloudTask's own event loop."""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def server(app: Any, host: str, port: int, *, handle_signals: bool = True) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return uvicorn.Server(config) if handle_signals else _QuietServer(config)


class _QuietServer(uvicorn.Server):
    """A server that leaves signal handling to its owner (the worker and friends stop in order)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
