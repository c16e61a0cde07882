"""Running an ASGI app with uvicorn inside CloudTask's own event loop."""

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

import uvicorn


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def serve(app: Any, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully and return (exit code 0,
    where uvicorn alone would re-raise the signal)."""
    instance = server(app, host, port, handle_signals=False)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(instance, "should_exit", True))
    await instance.serve()


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


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


async def run_until_signalled(
    service: Service, status: Any, host: str, port: int, grace: float
) -> None:
    """Start ``service`` and its status server; on SIGTERM or SIGINT stop it within ``grace``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    http = server(status, host, port, handle_signals=False)
    http_task = asyncio.create_task(http.serve(), name="status-server")
    stopped = asyncio.create_task(stop.wait())
    # Starting may wait for a broker that is down; a signal meanwhile still stops the process.
    starting = asyncio.create_task(service.start(), name="service-start")
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    failed = None if starting.cancelled() else starting.exception()
    if failed is not None:
        await service.stop(0)
        http.should_exit = True
        await asyncio.gather(http_task, return_exceptions=True)
        raise failed
    if not stopped.done():
        await asyncio.wait({stopped, http_task}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    await service.stop(grace)
    http.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
