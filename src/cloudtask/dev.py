"""``cloudtask dev``: every service in one process, on SQLite and the in-process broker and
key-value store. The embedded wiring, nothing else."""

import asyncio
import logging
import secrets
import sys
from pathlib import Path

from cloudtask import serving
from cloudtask.api.app import create_app
from cloudtask.broker.memory import MemoryBroker
from cloudtask.db.engine import create_engine
from cloudtask.db.migrate import upgrade_async
from cloudtask.kv.memory import MemoryKV
from cloudtask.results.service import ResultsService
from cloudtask.scheduler.service import SchedulerService
from cloudtask.settings import MIN_JWT_SECRET_BYTES, Settings
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.registry import user_handlers
from cloudtask.worker.service import WorkerService

log = logging.getLogger(__name__)


def dev_secret(db_path: Path, settings: Settings) -> str:
    """The configured secret if strong enough, else one generated once and kept beside the
    database, so tokens survive restarts."""
    configured = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if len(configured.encode()) >= MIN_JWT_SECRET_BYTES:
        return configured
    path = db_path.with_name(db_path.name + ".secret")
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret


def _prepare(db_path: Path) -> Path:
    db_path = db_path.resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return db_path


async def run(settings: Settings, host: str, port: int, db_path: Path) -> None:
    db_path = await asyncio.to_thread(_prepare, db_path)
    secret = await asyncio.to_thread(dev_secret, db_path, settings)
    url = f"sqlite:///{db_path}"
    await upgrade_async(url)
    engine = create_engine(url)
    broker, kv = MemoryBroker(), MemoryKV()
    await broker.start()
    await kv.start()
    mail_dir = db_path.parent / "cloudtask-mail"
    handlers = builtin_handlers(settings, mail_dir=mail_dir).merged(user_handlers)
    worker = WorkerService(settings, broker=broker, kv=kv, handlers=handlers)
    results = ResultsService(settings, db=engine, broker=broker)
    scheduler = SchedulerService(settings, db=engine, broker=broker, kv=kv)
    app = create_app(
        settings,
        db=engine,
        broker=broker,
        kv=kv,
        jwt_secret=secret,
        extra_metrics=[worker.metrics, results.metrics, scheduler.metrics],
    )
    await results.start()
    await worker.start()
    await scheduler.start()
    print(  # noqa: T201 - the start-up line the operator reads
        f"CloudTask dev listening on http://{host}:{port} "
        f"(database {db_path}, mail without SMTP goes to {mail_dir})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await serving.serve(app, host, port)
    finally:
        await scheduler.stop()
        await worker.stop(settings.worker_grace_seconds)
        await results.stop()
        await broker.close()
        await kv.close()
        await engine.dispose()
