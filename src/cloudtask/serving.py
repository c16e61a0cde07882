"""Running an ASGI app with uvicorn inside CloudTask's own event loop."""

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import unquote

import httptools
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.error_body import error_body
from cloudtask.ignored_upgrades import UpgradeIgnoringParser

log = logging.getLogger(__name__)


class PortUnavailable(Exception):
    """The HTTP server could not listen on its address (the port is taken, say)."""


async def _serve_http(
    instance: uvicorn.Server, host: str, port: int, sockets: list[socket.socket] | None = None
) -> None:
    # uvicorn calls sys.exit() when it cannot listen. Out of a task, that SystemExit ends the
    # event loop with every other task still running, and the process then hangs forever
    # waiting for them to cancel; as an ordinary exception its caller stops what it started.
    try:
        await instance.serve(sockets=sockets)
    except SystemExit:
        raise PortUnavailable(f"cannot serve HTTP on {host}:{port} (see the error above)") from None


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop where it is installed, else on asyncio's loop."""
    _tune_gc()
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _tune_gc() -> None:
    # What was imported so far lives as long as the process: frozen, later collections skip it.
    # A request allocates a few hundred objects, nearly all freed by their reference counts, so
    # the default threshold (a collection per 700 allocations) ran several per request.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve(
    app: Any,
    host: str,
    port: int,
    *,
    sock: socket.socket | None = None,
    hurried: object = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully and return (exit code 0,
    where uvicorn alone would re-raise the signal). ``sock``: an already listening socket;
    ``hurried``: a :class:`Hurried` service a second signal hurries (``cloudtask dev``'s
    worker, stopped after the server)."""
    instance = server(app, host, port, handle_signals=False)

    def first() -> None:
        instance.should_exit = True

    _on_signals(first, hurried)
    await _serve_http(instance, host, port, [sock] if sock is not None else None)


def _on_signals(first: Callable[[], None], hurried: object) -> None:
    """SIGTERM and SIGINT call ``first`` the first time; then, as Celery's second Ctrl-C, they
    hurry the stop of ``hurried`` if it is a :class:`Hurried` service (however soon after)."""
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        if signalled and isinstance(hurried, Hurried):
            hurried.hurry()
        signalled = True
        first()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def run_processes(count: int, child: Callable[[], None]) -> None:
    """Run ``child`` in ``count`` forked processes (which share sockets opened before), restart
    one that dies, and stop them all on SIGTERM or SIGINT. Fork happens before any event loop
    or connection exists in this process."""
    context = multiprocessing.get_context("fork")
    stopping = False
    parent = os.getpid()

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def start_child() -> None:
        # Not the parent's handlers: the child stops itself (see serve) on the signals.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _stop_when_orphaned(parent)
        child()

    processes = [context.Process(target=start_child) for _ in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.start()
    while True:
        for index, process in enumerate(processes):
            process.join(timeout=0.5)
            if not process.is_alive() and not stopping:
                log.warning("a server process exited (%s); starting another", process.exitcode)
                time.sleep(1)
                processes[index] = context.Process(target=start_child)
                processes[index].start()
        if stopping and not any(process.is_alive() for process in processes):
            return


def _stop_when_orphaned(parent: int) -> None:
    """Stop this process as SIGTERM does once ``parent`` is gone: a parent killed on its own
    (SIGKILL, which it cannot pass on) must not leave its children serving the port that a
    restarted parent would then find taken."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        log.warning("the parent process is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


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
        http=HTTP_PROTOCOL,
        # No route takes a WebSocket: a request asking for one is answered as the plain request
        # it also is (see ignored_upgrades), not refused with an empty 403.
        ws="none",
    )
    return uvicorn.Server(config) if handle_signals else _QuietServer(config)


def bad_request(target: bytes, message: str) -> bytes:
    """The answer to a request the HTTP parser refused, in the error body every other error has.
    ``target``: the request's path and query as far as they were read (maybe nothing)."""
    path, _, _ = target.decode("utf-8", "replace").partition("?")
    body = jsoncodec.dumps(error_body(400, message, unquote(path, errors="replace")))
    return (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


def _send_400_response(self: Any, msg: str) -> None:
    # uvicorn answers a request it cannot parse (a bad Content-Length, a garbled request line)
    # itself, in plain text, before any application sees it.
    self.transport.write(bad_request(getattr(self, "url", b"") or b"", msg))
    self.transport.close()


class GatheredWrites:
    """A connection's transport whose writes within one turn of the event loop leave in one
    system call. uvicorn writes a response's status line and headers, then its body, each at
    once: two ``send`` calls per answer, 18% of the api's samples under load (py-spy)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():  # aborted, or lost, meanwhile
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _connection_made(self: Any, transport: asyncio.Transport) -> None:
    AutoHTTPProtocol.connection_made(self, cast(asyncio.Transport, GatheredWrites(transport)))


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    AutoHTTPProtocol.__init__(self, *args, **kwargs)
    if isinstance(getattr(self, "parser", None), httptools.HttpRequestParser):
        self.parser = UpgradeIgnoringParser(self, self)


# uvicorn's own protocol (httptools where installed, else h11), but for those three points.
HTTP_PROTOCOL: type[asyncio.Protocol] = type(
    "HTTPProtocol",
    (AutoHTTPProtocol,),
    {
        "__init__": _init,
        "send_400_response": _send_400_response,
        "connection_made": _connection_made,
    },
)


class _QuietServer(uvicorn.Server):
    """A server that leaves signal handling to its owner (the worker and friends stop in order)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


@runtime_checkable
class Hurried(Protocol):
    """A service whose stop can be cut short (the worker's grace for its running jobs)."""

    def hurry(self) -> None: ...


async def run_until_signalled(
    service: Service, status: Any, host: str, port: int, grace: float
) -> None:
    """Start ``service`` and its status server; on SIGTERM or SIGINT stop it within ``grace``
    (a second signal cuts that short: see :func:`_on_signals`)."""
    stop = asyncio.Event()
    _on_signals(stop.set, service)
    http = server(status, host, port, handle_signals=False)
    http_task = asyncio.create_task(_serve_http(http, host, port), name="status-server")
    # Listening first: a service whose port is taken exits before it takes any work.
    while not http.started and not http_task.done():  # noqa: ASYNC110 - uvicorn has no event for it
        await asyncio.sleep(0.01)
    if http_task.done():
        await http_task  # raises PortUnavailable (or whatever ended it)
        return
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
    unservable = http_task.done() and not http_task.cancelled() and http_task.exception()
    await service.stop(0 if unservable else grace)
    http.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
    if unservable:
        raise unservable
