"""``cloudtask``: one subcommand per service. The composition root: it reads the settings, builds
the back ends and hands them to each service."""

import argparse
import asyncio
import importlib
import importlib.util
import socket
import sys
import sysconfig
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cloudtask import log, serving
from cloudtask.contracts.job_types import BUILTIN_PAYLOADS
from cloudtask.errors import BrokerUnavailable, DatabaseRefused, DatabaseUnavailable
from cloudtask.settings import (
    LONGEST,
    Settings,
    SettingsError,
    load_settings,
    unknown_settings,
)
from cloudtask.worker.registry import RegistrationError, user_handlers

if TYPE_CHECKING:
    from cloudtask.backends import Backends

# Each command imports what it runs, when it runs it: a worker never loads the API's web stack,
# and a start refused for its settings (or --help) answers in half the time.

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - services listen on every interface, as in containers


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= LONGEST:
        raise argparse.ArgumentTypeError(f"must be 0 to {LONGEST:.0f} seconds, not {text}")
    return value


_PORT = _bounded_int(0, 65535)  # 0: any free port
_CONCURRENCY = _bounded_int(1, 1024)  # CLOUDTASK_WORKER_CONCURRENCY's range


def _add_http(parser: argparse.ArgumentParser, port: int, host: str = ALL_INTERFACES) -> None:
    parser.add_argument("--host", default=host, help=f"interface to listen on (default {host})")
    parser.add_argument("--port", type=_PORT, default=port, help=f"HTTP port (default {port})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudtask", description="CloudTask: a distributed job-processing system."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="run the job-service (REST API)")
    _add_http(api, 8080)
    api.add_argument(
        "--workers",
        type=_bounded_int(1, 256),
        default=1,
        help="server processes sharing the port, to use more than one core (default 1)",
    )

    worker = commands.add_parser("worker", help="run a worker (serves /metrics and /health)")
    _add_http(worker, 9091)
    worker.add_argument(
        "--concurrency",
        type=_CONCURRENCY,
        help="jobs run at once (default CLOUDTASK_WORKER_CONCURRENCY, 16)",
    )
    worker.add_argument(
        "--grace",
        type=_seconds,
        help="seconds running jobs get to finish on SIGTERM before they are requeued "
        "(default CLOUDTASK_WORKER_GRACE_SECONDS, 30)",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE, which registers job handlers (repeatable)",
    )

    results = commands.add_parser(
        "results", help="run the results-processor (serves /metrics and /health)"
    )
    _add_http(results, 9092)

    scheduler = commands.add_parser(
        "scheduler", help="run a scheduler (serves /metrics and /health); run several for HA"
    )
    _add_http(scheduler, 9093)

    dev_cmd = commands.add_parser(
        "dev", help="run everything in one process on SQLite, with no server needed"
    )
    _add_http(dev_cmd, 8080, host="127.0.0.1")
    dev_cmd.add_argument(
        "--db", default="./cloudtask-dev.db", help="SQLite file (default ./cloudtask-dev.db)"
    )
    dev_cmd.add_argument("--concurrency", type=_CONCURRENCY, help="jobs the worker runs at once")
    dev_cmd.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE, which registers job handlers (repeatable)",
    )  # fmt: skip

    commands.add_parser("migrate", help="apply the database migrations")

    requeue = commands.add_parser(
        "requeue",
        help="queue again the PENDING jobs whose messages RabbitMQ lost "
        "(after jobs.created was purged or deleted)",
    )
    requeue.add_argument(
        "--older-than",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="only jobs PENDING for at least this long (default 60)",
    )
    requeue.add_argument(
        "--force",
        action="store_true",
        help="do not first ask RabbitMQ that jobs.created, jobs.started and jobs.completed are "
        "empty and jobs.created has no consumer (no worker running)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        for line in unknown_settings():
            print(f"cloudtask: warning: {line}", file=sys.stderr)  # noqa: T201 - before logging
        _run(args, settings)
    except SettingsError as exc:
        print(f"cloudtask: {exc}", file=sys.stderr)  # noqa: T201 - the one-line start-up error
        sys.exit(2)
    except serving.PortUnavailable as exc:
        print(f"cloudtask: {exc}", file=sys.stderr)  # noqa: T201 - the one-line start-up error
        sys.exit(1)
    except DatabaseRefused as exc:
        print(f"cloudtask: cannot use the database: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def import_handler_modules(modules: Sequence[str]) -> None:
    sys.path.insert(0, str(Path.cwd()))  # as `python -m` would, so local modules are found
    for module in modules:
        try:
            importlib.import_module(module)
        except (ImportError, RegistrationError) as exc:
            raise SettingsError(f"--import {module}: {_first_line(exc)}") from None
        except SyntaxError as exc:  # its message says where
            raise SettingsError(f"--import {module}: SyntaxError: {_first_line(exc)}") from None
        except Exception as exc:  # the module's own code failed as it ran: what, and where
            raise SettingsError(
                f"--import {module}: {type(exc).__name__}: {_first_line(exc)} "
                f"({_where(exc, module)})"
            ) from None
        for handler in user_handlers:
            if handler.type in BUILTIN_PAYLOADS:
                raise SettingsError(
                    f"--import {module}: job type {handler.type!r} is built in; "
                    "register yours under another name"
                )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] + (" …" if len(lines) > 1 else "")) if lines else "(no message)"


def _where(exc: BaseException, module: str) -> str:
    """The deepest frame of the failure in the module's own package; else the deepest outside
    the standard library, installed packages and CloudTask (``os.environ[…]`` fails in ``os``,
    a model in pydantic)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = _package_paths(module)
    libraries = [
        Path(path).resolve()
        for name, path in sysconfig.get_paths().items()
        if name in ("stdlib", "platstdlib", "purelib", "platlib")
    ] + [Path(__file__).resolve().parent]

    def under(frame: traceback.FrameSummary, roots: list[Path]) -> bool:
        path = Path(frame.filename).resolve()
        return any(path == root or path.is_relative_to(root) for root in roots)

    chosen = [frame for frame in frames if under(frame, own)] or [
        frame
        for frame in frames
        if not frame.filename.startswith("<") and not under(frame, libraries)
    ]
    frame = (chosen or frames)[-1]
    return f"{frame.filename}, line {frame.lineno}"


def _package_paths(module: str) -> list[Path]:
    """Where the top-level package of ``module`` lives (its directories, or its file)."""
    try:
        spec = importlib.util.find_spec(module.split(".", maxsplit=1)[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(path).resolve() for path in spec.submodule_search_locations]
    return [Path(spec.origin).resolve()] if spec.origin else []


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if getattr(args, "concurrency", None) is not None:
        settings = settings.model_copy(update={"worker_concurrency": args.concurrency})
    if getattr(args, "grace", None) is not None:
        settings = settings.model_copy(update={"worker_grace_seconds": args.grace})
    import_handler_modules(getattr(args, "imports", []))
    if args.command == "migrate":
        from cloudtask.db.migrate import upgrade

        settings.require_urls("database_url")
        log.configure("migrate", settings.log_level, settings.log_format)
        upgrade(settings.database_url.get_secret_value())
        return
    if args.command == "requeue":
        settings.require_urls("database_url")
        if not args.force:
            settings.require_urls("rabbitmq_url")
        log.configure("requeue", settings.log_level, settings.log_format)
        _requeue(settings, args.older_than, force=args.force)
        return
    if args.command == "dev":
        from cloudtask import dev

        log.configure("dev", settings.log_level, settings.log_format)
        serving.run(lambda: dev.run(settings, args.host, args.port, Path(args.db)))
        return
    settings.require_jwt_secret()
    # Each service opens all three back ends (open_backends), whichever it then uses.
    settings.require_urls("database_url", "rabbitmq_url", "redis_url")
    log.configure(args.command, settings.log_level, settings.log_format)
    if args.command == "api" and args.workers > 1:
        from cloudtask.backends import require_migrated_at
        from cloudtask.observability import shared_values

        # Here, once, rather than in each server process, which would exit and be restarted.
        asyncio.run(require_migrated_at(settings.database_url.get_secret_value()))
        sock = serving.listening_socket(args.host, args.port)

        def child() -> None:
            shared_values.use_shared_values()
            serving.run(lambda: _api(settings, args.host, args.port, sock))

        with shared_values.shared_directory():
            serving.run_processes(args.workers, child)
        return
    commands = {"api": _api, "worker": _worker, "results": _results, "scheduler": _scheduler}
    serving.run(lambda: commands[args.command](settings, args.host, args.port))


def _requeue(settings: Settings, older_than: float, *, force: bool) -> None:
    from cloudtask.backends import require_migrated
    from cloudtask.broker.rabbitmq import RabbitMQBroker
    from cloudtask.db.engine import create_engine
    from cloudtask.requeue import NotNow, check_queues, requeue_pending

    async def checked() -> None:
        broker = RabbitMQBroker(settings.rabbitmq_url.get_secret_value())
        try:
            await broker.connect_once()
            await check_queues(broker)
        except BrokerUnavailable as exc:
            raise SettingsError(
                f"cannot ask RabbitMQ whether its queues are empty ({log.redact(str(exc))}); "
                "--force requeues without asking"
            ) from None
        finally:
            await broker.close()

    async def run() -> None:
        engine = create_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            await require_migrated(engine)
            if not force:
                await checked()
            done = await requeue_pending(engine, older_than)
        except NotNow as exc:
            raise SettingsError(str(exc)) from None
        except DatabaseUnavailable as exc:
            raise DatabaseRefused(str(exc).removeprefix("database: ")) from None
        finally:
            await engine.dispose()
        print(  # noqa: T201 - the command's answer
            f"queued again {done.jobs} PENDING job(s) waiting since before "
            f"{done.before.isoformat(timespec='seconds')}; a running api or scheduler "
            "publishes them within CLOUDTASK_OUTBOX_RELAY_AFTER_SECONDS"
        )

    asyncio.run(run())


async def _api(settings: Settings, host: str, port: int, sock: socket.socket | None = None) -> None:
    from cloudtask.api.app import create_app
    from cloudtask.backends import open_backends
    from cloudtask.db.engine import Plans

    backends = await open_backends(settings, plans=Plans.FRESH_SQLALCHEMY, schema=True)
    try:
        app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
        await serving.serve(app, host, port, sock=sock)
    finally:
        await backends.close()


async def _worker(settings: Settings, host: str, port: int) -> None:
    from cloudtask.backends import open_backends
    from cloudtask.observability.server import status_app
    from cloudtask.worker.handlers import builtin_handlers
    from cloudtask.worker.service import WorkerService

    backends = await open_backends(settings)
    handlers = builtin_handlers(settings).merged(user_handlers)
    worker = WorkerService(settings, broker=backends.broker, kv=backends.kv, handlers=handlers)
    checks = {"broker": backends.broker.ping, "redis": backends.kv.ping}
    await _serve(backends, worker, status_app([worker.metrics], checks), host, port, settings)


async def _results(settings: Settings, host: str, port: int) -> None:
    from cloudtask.backends import open_backends
    from cloudtask.db.engine import Plans
    from cloudtask.observability.health import database_check
    from cloudtask.observability.server import status_app
    from cloudtask.results.service import ResultsService

    backends = await open_backends(settings, plans=Plans.FRESH, schema=True)
    results = ResultsService(settings, db=backends.db, broker=backends.broker)
    # It never uses Redis (the client connects on first use, so it never does): Redis being
    # down takes nothing from it.
    checks = {"db": database_check(backends.db), "broker": backends.broker.ping}
    await _serve(backends, results, status_app([results.metrics], checks), host, port, settings)


async def _scheduler(settings: Settings, host: str, port: int) -> None:
    from cloudtask.backends import open_backends
    from cloudtask.db.engine import Plans
    from cloudtask.observability.health import standard_checks
    from cloudtask.observability.server import status_app
    from cloudtask.scheduler.service import SchedulerService

    backends = await open_backends(settings, plans=Plans.FRESH, schema=True)
    scheduler = SchedulerService(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    checks = standard_checks(backends.db, backends.broker, backends.kv)
    await _serve(backends, scheduler, status_app([scheduler.metrics], checks), host, port, settings)


async def _serve(
    backends: "Backends",
    service: serving.Service,
    status: object,
    host: str,
    port: int,
    settings: Settings,
) -> None:
    try:
        await serving.run_until_signalled(
            service, status, host, port, settings.worker_grace_seconds
        )
    finally:
        await backends.close()


if __name__ == "__main__":
    main()
