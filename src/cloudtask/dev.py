"""``cloudtask dev``: every service in one process, on SQLite and the in-process broker and
key-value store. The embedded wiring, nothing else."""

import asyncio
import json
import logging
import secrets
import socket
import sys
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask import serving
from cloudtask.api.app import create_app
from cloudtask.broker.base import Broker, OutgoingMessage
from cloudtask.broker.memory import MemoryBroker
from cloudtask.contracts.queues import (
    JOBS_COMPLETED,
    JOBS_CREATED,
    JOBS_STARTED,
    REQUEUED_HEADER,
)
from cloudtask.contracts.signals import REQUEUED, lease_key
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.engine import create_engine
from cloudtask.db.migrate import upgrade_async
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import DatabaseRefused
from cloudtask.kv.base import KV
from cloudtask.kv.memory import MemoryKV
from cloudtask.results.service import ResultsService
from cloudtask.scheduler.service import SchedulerService
from cloudtask.settings import MIN_JWT_SECRET_BYTES, Settings, SettingsError
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
    if db_path.is_dir():
        raise SettingsError(
            f"--db {db_path} is a directory: give the database file's path, such as "
            f"{db_path / 'cloudtask-dev.db'}"
        )
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a directory should be, a directory not ours
        raise SettingsError(
            f"--db {db_path}: cannot make its directory {db_path.parent}: {exc.strerror}"
        ) from None
    return db_path


async def requeue_unfinished(engine: AsyncEngine, broker: Broker, kv: KV) -> int:
    """Queue again every PENDING job, and every RUNNING one the worker put back as it stopped
    (its lease holds the requeued marker, kept in the key-value store's file): the in-process
    broker starts empty, and the jobs it held when the last process stopped are in the database
    alone. Their messages still in the outbox are replaced, so that each is queued once. A
    RUNNING job without the marker was cut off by a kill: the scheduler recovers it as a lost
    attempt (counted, run alone), as it does a dead worker's. Returns how many were queued."""
    now = utcnow()
    async with session.transaction(engine) as conn:
        running = await dispatch_q.running_since(conn, now, limit=None)
        leases = await kv.get_many([lease_key(job.id, job.attempt) for job in running])
        put_back = [job for job, lease in zip(running, leases, strict=True) if lease == REQUEUED]
        # PENDING again, so that the new start's jobs.started sets startedAt and the hung check
        # counts from it; not counted as a loss.
        await dispatch_q.redispatch(conn, put_back, now=now, counted=False)
        await outbox_q.remove_queue(conn, JOBS_CREATED)
        waiting = await dispatch_q.pending(conn)
    # Used up, for every job queued again (a PENDING one was put back while it waited to run
    # alone): a marker still in the file would make a job this process runs and a kill cuts off
    # look put back at the next start (uncounted, its cancel forgotten). Nothing runs yet, so no
    # lease of theirs is anyone's.
    await kv.delete(*(lease_key(job.id, job.attempt) for job in waiting))
    await broker.publish_many(
        [
            OutgoingMessage(
                JOBS_CREATED,
                job.message(now).body.encode(),
                job.priority,
                {REQUEUED_HEADER: True},  # leases from before the stop do not hold them back
            )
            for job in waiting
        ]
    )
    return len(waiting)


async def _drain_reports(broker: MemoryBroker, timeout: float = 5.0) -> None:
    """Give the results-processor the reports of the jobs that ended during shutdown: they
    would go with the in-process broker, and the jobs would run again after a restart."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = [await broker.stats(queue) for queue in (JOBS_STARTED, JOBS_COMPLETED)]
        if not any(queue.messages for queue in stats):
            await asyncio.sleep(0.2)  # the last ones taken are being written
            return
        await asyncio.sleep(0.05)


def _kv_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".kv.json")


def _load_kv(kv: MemoryKV, path: Path) -> None:
    """What the key-value store held when the last process stopped: idempotency keys, login
    throttling, leases and counters, as Redis would have kept them."""
    try:
        kv.restore(json.loads(path.read_text()))
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("could not read the key-value store's last state (%s): starting empty", exc)


def _save_kv(kv: MemoryKV, path: Path) -> None:
    # Written whole, then moved into place: a stop cut short leaves the previous state. It holds
    # stored answers (job payloads), hence the database's privacy.
    partial = path.with_name(path.name + ".partial")
    partial.touch(mode=0o600)
    partial.write_text(json.dumps(kv.snapshot()))
    partial.replace(path)


async def run(settings: Settings, host: str, port: int, db_path: Path) -> None:
    # Listening first: a second `cloudtask dev` on a taken port exits before it queues again
    # the pending jobs of its database or runs any.
    sock = serving.listening_socket(host, port)
    try:
        await _run(settings, host, port, db_path, sock)
    finally:
        sock.close()


async def _run(
    settings: Settings, host: str, port: int, db_path: Path, sock: socket.socket
) -> None:
    db_path = await asyncio.to_thread(_prepare, db_path)
    url = f"sqlite:///{db_path}"
    try:
        await upgrade_async(url)
    except DatabaseRefused as exc:
        raise SettingsError(
            f"--db {db_path}: {exc} (give the path of a new file, or of a dev database)"
        ) from None
    secret = await asyncio.to_thread(dev_secret, db_path, settings)
    engine = create_engine(url)
    broker, kv = MemoryBroker(), MemoryKV()
    await asyncio.to_thread(_load_kv, kv, _kv_path(db_path))
    await broker.start()
    await kv.start()
    if requeued := await requeue_unfinished(engine, broker, kv):
        await asyncio.to_thread(_save_kv, kv, _kv_path(db_path))
        log.info("unfinished jobs queued again", extra={"action": "dev.requeued", "jobs": requeued})
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
        f"CloudTask dev listening on http://{host}:{sock.getsockname()[1]} "
        f"(database {db_path}, mail without SMTP goes to {mail_dir})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await serving.serve(app, host, port, sock=sock, hurried=worker)
    finally:
        await scheduler.stop()
        await worker.stop(settings.worker_grace_seconds)
        await _drain_reports(broker)
        await results.stop()
        await broker.close()
        await kv.close()
        await asyncio.to_thread(_save_kv, kv, _kv_path(db_path))
        await engine.dispose()
