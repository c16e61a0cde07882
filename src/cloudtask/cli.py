"""``cloudtask``: one subcommand per service. The composition root: it reads the settings, builds
the back ends and hands them to each service."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cloudtask import dev, log, serving
from cloudtask.api.app import create_app
from cloudtask.backends import open_backends
from cloudtask.db.migrate import upgrade
from cloudtask.settings import Settings, SettingsError, load_settings


def _add_http(parser: argparse.ArgumentParser, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - services listen on all interfaces by default, as in containers
    parser.add_argument("--host", default=host, help=f"interface to listen on (default {host})")
    parser.add_argument("--port", type=int, default=port, help=f"HTTP port (default {port})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudtask", description="CloudTask: a distributed job-processing system."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="run the job-service (REST API)")
    _add_http(api, 8080)

    dev = commands.add_parser(
        "dev", help="run everything in one process on SQLite, with no server needed"
    )
    _add_http(dev, 8080, host="127.0.0.1")
    dev.add_argument(
        "--db", default="./cloudtask-dev.db", help="SQLite file (default ./cloudtask-dev.db)"
    )
    dev.add_argument("--concurrency", type=int, help="jobs the worker runs at once")

    commands.add_parser("migrate", help="apply the database migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        _run(args, settings)
    except SettingsError as exc:
        print(f"cloudtask: {exc}", file=sys.stderr)  # noqa: T201 - the one-line start-up error
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "migrate":
        log.configure("migrate", settings.log_level, settings.log_format)
        upgrade(settings.database_url.get_secret_value())
        return
    if args.command == "dev":
        overrides = {"worker_concurrency": args.concurrency} if args.concurrency else {}
        dev_settings = settings.model_copy(update=overrides)
        log.configure("dev", settings.log_level, settings.log_format)
        serving.run(lambda: dev.run(dev_settings, args.host, args.port, Path(args.db)))
        return
    settings.require_jwt_secret()
    log.configure(args.command, settings.log_level, settings.log_format)
    if args.command == "api":
        serving.run(lambda: _api(settings, args.host, args.port))


async def _api(settings: Settings, host: str, port: int) -> None:
    backends = await open_backends(settings)
    try:
        app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
        await serving.server(app, host, port).serve()
    finally:
        await backends.close()


if __name__ == "__main__":
    main()
