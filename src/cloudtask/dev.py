"""``cloudtask dev``: every service in one process, on SQLite and the in-process broker and
key-value store. The embedded wiring, nothing else."""

import asyncio
import contextlib
import json
import logging
import os
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
from cloudtask.contracts.signals import REQUEUED, SCHEDULER_LEASE, lease_key
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
    database, so tokens survive restarts. A kept one too short to be a secret (a file emptied,
    or edited) is replaced: signing with it failed every login, or let anyone forge a token."""
    configured = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if len(configured.encode()) >= MIN_JWT_SECRET_BYTES:
        return configured
    path = db_path.with_name(db_path.name + ".secret")
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = None
    except (OSError, UnicodeDecodeError):
        kept = ""
    if kept is not None and len(kept.encode()) >= MIN_JWT_SECRET_BYTES:
        return kept
    if kept is not None:
        log.warning("the secret in %s is too short to sign tokens: a new one replaces it", path)
    secret = secrets.token_hex(32)
    _write_privately(path, secret)
    return secret


def _write_privately(path: Path, text: str) -> None:
    # Written whole, then moved into place: a process cut short leaves the previous file, not
    # an empty one. Readable by its owner alone (a secret; stored answers hold job payloads).
    partial = path.with_name(path.name + ".partial")
    partial.touch(mode=0o600)
    partial.write_text(text)
    partial.replace(path)


def _lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


def _lock(db_path: Path) -> int | None:
    """Hold the database for this process, or refuse in one line: two ``cloudtask dev`` on one
    database each queued its pending jobs again and ran them, and took the scheduler's lead in
    turn. The lock goes with the process, however it ends."""
    if sys.platform == "win32":  # no flock there: not refused
        return None
    import fcntl  # noqa: PLC0415 - POSIX only

    descriptor = os.open(_lock_path(db_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise SettingsError(
            f"--db {db_path} is in use by another cloudtask dev: stop it, or give another --db"
        ) from None
    return descriptor


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
    # Saved while the last process ran and led, if a kill ended it: its scheduler would not
    # renew the lead, and this one's waited for it to expire (10 s without dispatching, firing
    # schedules or recovering). This process holds the database alone (its lock).
    kv.drop_lease(SCHEDULER_LEASE)


def _save_kv(kv: MemoryKV, path: Path) -> None:
    _write_privately(path, json.dumps(kv.snapshot()))


KV_SAVED_EVERY = 1.0


async def _keep_saving_kv(kv: MemoryKV, path: Path, stopping: asyncio.Event) -> None:
    """Save the store every second while the process runs, not only when it stops: a kill lost
    every Idempotency-Key answer and login count since the start, and a retried request then
    created its job again. Returns once ``stopping`` is set and no write is under way (the
    last one, at the stop, must not be overtaken by an older state)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), KV_SAVED_EVERY)
            return
        snapshot = json.dumps(kv.snapshot())  # taken here, between two of the loop's steps
        try:
            await asyncio.to_thread(_write_privately, path, snapshot)
        except OSError as exc:
            log.warning("could not save the key-value store (%s)", exc)


async def run(settings: Settings, host: str, port: int, db_path: Path) -> None:
    # Listening first: a second `cloudtask dev` on a taken port exits before it queues again
    # the pending jobs of its database or runs any.
    sock = serving.listening_socket(host, port)
    try:
        await _run(settings, host, db_path, sock)
    finally:
        sock.close()


async def _run(settings: Settings, host: str, db_path: Path, sock: socket.socket) -> None:
    db_path = await asyncio.to_thread(_prepare, db_path)
    url = f"sqlite:///{db_path}"
    # Held before the migration: two processes started together both migrated the new file,
    # and one failed part way with a traceback (a newer version would migrate a database
    # another process runs on).
    lock = await asyncio.to_thread(_lock, db_path)
    try:
        try:
            await upgrade_async(url)
        except DatabaseRefused as exc:
            _lock_path(db_path).unlink(missing_ok=True)  # nothing of ours left beside that file
            raise SettingsError(
                f"--db {db_path}: {exc} (give the path of a new file, or of a dev database)"
            ) from None
        await _run_on(settings, host, db_path, sock, url)
    finally:
        if lock is not None:
            os.close(lock)


async def _run_on(
    settings: Settings, host: str, db_path: Path, sock: socket.socket, url: str
) -> None:
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
    stopping = asyncio.Event()
    saving = asyncio.create_task(_keep_saving_kv(kv, _kv_path(db_path), stopping))
    try:
        await serving.serve(app, host, sock.getsockname()[1], sock=sock, hurried=worker)
    finally:
        stopping.set()
        await scheduler.stop()
        await worker.stop(settings.worker_grace_seconds)
        await _drain_reports(broker)
        await results.stop()
        await broker.close()
        await kv.close()
        await saving
        await asyncio.to_thread(_save_kv, kv, _kv_path(db_path))
        await engine.dispose()
