"""The measured scenarios, (a) to (g) of issue 6, each against a running stack, and (r), the
bare endpoint the issue scaled its targets to.

Each scenario returns its figures (flat names, plain numbers) and the details behind them; the
CPU each process used while it ran is recorded beside them, so the report can say which process
limited the figure.
"""

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

from scripts.bench import profile, stack, wrkload
from scripts.bench.infra import CeleryInfra, Infra

REPO = Path(__file__).resolve().parents[2]
UNFINISHED = ("PENDING", "RUNNING", "SCHEDULED")
POLL_S = 0.05


@dataclass
class Options:
    quick: bool
    duration: float  # (a) closed loop, seconds
    rate: float  # (b) arrival rate, requests/s
    rate_duration: float  # (b) seconds
    e2e_jobs: int  # (c) and (f)
    latency_rate: float  # (d) jobs/s
    latency_duration: float  # (d) seconds
    batch_requests: int  # (e) requests of batch_size jobs
    batch_size: int
    batch_concurrency: int
    list_rows: int  # (g)
    list_requests: int
    connections: int  # (a)
    users: int
    generator: str  # "wrk", "python" or "auto"
    celery_pool: str
    celery_concurrency: int
    drain_timeout: float
    profile: bool
    warmup_requests: int = 300


@dataclass
class User:
    email: str
    token: str
    user_id: str


@dataclass
class Outcome:
    figures: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _user_id(token: str) -> str:
    claims = token.split(".")[1]
    sub: str = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sub"]
    return sub


def register_users(api_url: str, count: int, prefix: str = "bench") -> list[User]:
    users = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for n in range(count):
            email = f"{prefix}-{n}-{os.urandom(4).hex()}@example.com"
            response = client.post(
                "/auth/register", json={"email": email, "password": "bench-password"}
            )
            response.raise_for_status()
            token = response.json()["token"]
            users.append(User(email, token, _user_id(token)))
    return users


# --- the load generator, as a separate process --------------------------------------------------


async def start_loadgen(config: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench.httpload",
        json.dumps(config),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_loadgen(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def loadgen(config: dict[str, Any]) -> dict[str, Any]:
    return await finish_loadgen(await start_loadgen(config))


# --- the bench: one stack, its database, and the scenarios --------------------------------------


class Bench:
    def __init__(
        self,
        options: Options,
        cloudtask: stack.Stack,
        infra: Infra,
        log_dir: Path,
        celery: CeleryInfra | None = None,
    ) -> None:
        self.options = options
        self.stack = cloudtask
        self.infra = infra
        self.log_dir = log_dir
        self.celery = celery
        self.users: list[User] = []
        self.lister = User("", "", "")
        self.db: asyncpg.Connection | None = None

    async def __aenter__(self) -> "Bench":
        self.db = await asyncpg.connect(self.infra.database_url)
        self.users = await asyncio.to_thread(register_users, self.stack.api_url, self.options.users)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.db is not None:
            await self.db.close()

    @property
    def sql(self) -> asyncpg.Connection:
        if self.db is None:
            raise RuntimeError("the bench is not connected to its database")
        return self.db

    @property
    def tokens(self) -> list[str]:
        return [user.token for user in self.users]

    def _config(self, **config: Any) -> dict[str, Any]:
        return {"url": self.stack.api_url, "tokens": self.tokens, **config}

    # --- measuring ----------------------------------------------------------------------------

    def _cpu_groups(self, extra: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {name: [pid] for name, pid in self.stack.pids().items()}
        databases = [self.infra.database_url.rsplit("/", 1)[1]]
        if self.celery is not None:
            databases.append(self.celery.database_url.rsplit("/", 1)[1])
        groups.update(stack.server_pids(databases))
        groups.update(extra or {})
        return groups

    async def measure(
        self,
        name: str,
        scenario: Callable[[Outcome], Awaitable[None]],
        extra_pids: dict[str, list[int]] | None = None,
    ) -> Outcome:
        outcome = Outcome()
        # Wall-clock times, to find a scenario in the services' logs.
        outcome.detail["began"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        meter = stack.CpuMeter(lambda: self._cpu_groups(extra_pids))
        profiler = (
            profile.Profiler(self.stack.pids(), self.log_dir / "profiles" / name)
            if self.options.profile
            else None
        )
        meter.start()
        try:
            await scenario(outcome)
        except Exception as exc:  # one failed scenario must not stop the others
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            outcome.cpu = meter.stop()
            if profiler is not None:
                outcome.detail["profile"] = await asyncio.to_thread(profiler.stop)
        _cpu_per_item(name, outcome, meter.seconds)
        _account_clients(outcome, meter.elapsed)
        outcome.detail["cpu_seconds"] = {k: round(v, 3) for k, v in meter.seconds.items()}
        outcome.detail["window_s"] = round(meter.elapsed, 3)
        outcome.detail["ended"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.stack.check_alive()
        return outcome

    async def max_seq(self) -> int:
        value: int = await self.sql.fetchval("SELECT coalesce(max(seq), 0) FROM jobs")
        return value

    async def drain(self) -> dict[str, float]:
        """Wait until no job is left to run, so one scenario's backlog does not slow the next."""
        started = time.monotonic()
        deadline = started + self.options.drain_timeout
        first = None
        while True:
            left = await self.sql.fetchval(
                "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(UNFINISHED)
            )
            first = left if first is None else first
            if left == 0:
                elapsed = time.monotonic() - started
                vacuum_s = await self.vacuum()
                return {"jobs": first, "seconds": round(elapsed, 2), "vacuum_s": vacuum_s}
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} jobs still unfinished after draining for the timeout")
            self.stack.check_alive()
            await asyncio.sleep(0.2)

    async def vacuum(self) -> float:
        """Clear the dead rows a scenario left in the tables it churned, as autovacuum would in
        time: the machine's PostgreSQL may run with it off (CI's does), and then every later
        scenario pays for the earlier ones' dead rows (the latency figure most). No ANALYZE:
        statistics of the warm-up's few rows gave plans that stayed bad as (c) grew the table."""
        started = time.monotonic()
        await self.sql.execute("VACUUM jobs, outbox")
        return round(time.monotonic() - started, 2)

    async def wait_completed(self, after_seq: int, count: int, timeout: float) -> float:
        """Poll PostgreSQL until ``count`` jobs above ``after_seq`` are COMPLETED; the wall-clock
        time it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            done, failed = await self.sql.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'COMPLETED'),"
                " count(*) FILTER (WHERE status IN ('FAILED', 'CANCELLED'))"
                " FROM jobs WHERE seq > $1",
                after_seq,
            )
            if done >= count:
                return time.time()
            if failed:
                raise RuntimeError(f"{failed} jobs FAILED or CANCELLED")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {count} jobs COMPLETED within {timeout} s")
            await asyncio.sleep(POLL_S)

    # --- warm-up and (a) ----------------------------------------------------------------------

    async def warmup(self) -> None:
        await loadgen(
            self._config(
                mode="count",
                path="/jobs",
                body="echo",
                count=self.options.warmup_requests,
                concurrency=16,
            )
        )
        await self.drain()

    def _use_wrk(self) -> bool:
        if self.options.generator == "wrk" and not wrkload.available():
            raise RuntimeError("--generator wrk, but wrk is not installed (apt-get install wrk)")
        return self.options.generator == "wrk" or (
            self.options.generator == "auto" and wrkload.available()
        )

    async def _closed_loop(self, url: str, tokens: list[str], duration: float) -> dict[str, Any]:
        """``POST /jobs`` with ``echo`` bodies at ``connections`` requests at a time."""
        connections = self.options.connections
        if self._use_wrk():
            return await asyncio.to_thread(
                wrkload.closed_loop, url + "/jobs", tokens, connections, duration
            )
        return await loadgen(
            {
                "url": url,
                "tokens": tokens,
                "mode": "closed",
                "path": "/jobs",
                "body": "echo",
                "concurrency": connections,
                "duration": duration,
                "warmup": 1.0,
            }
        )

    async def api_closed_loop(self, outcome: Outcome) -> None:
        load = await self._closed_loop(self.stack.api_url, self.tokens, self.options.duration)
        outcome.detail["load"] = load
        outcome.detail["items"] = load["ok"]
        outcome.figures.update(
            {
                "api.creations_per_s": load["ok_per_s"],
                "api.p50_ms": load["p50_ms"],
                "api.p99_ms": load["p99_ms"],
                "api.errors": load["failed"],
            }
        )

    # --- (r) ----------------------------------------------------------------------------------

    async def reference(self, outcome: Outcome, app: "Reference") -> None:
        """The bare endpoint of ``reference_app`` under the load of (a), for half as long (at
        least 3 s, but in a --quick run, which only checks that it works)."""
        duration = max(1.0 if self.options.quick else 3.0, self.options.duration / 2)
        url = app.service.url
        await self._closed_loop(url, app.tokens, 1.0)  # both workers' first requests
        load = await self._closed_loop(url, app.tokens, duration)
        outcome.detail["load"] = load
        outcome.figures.update(
            {"ref.requests_per_s": load["ok_per_s"], "ref.p99_ms": load["p99_ms"]}
        )
        if load["failed"]:
            raise RuntimeError(f"{load['failed']} requests to the reference endpoint failed")

    # --- (b) ----------------------------------------------------------------------------------

    async def api_open_loop(self, outcome: Outcome) -> None:
        options = self.options
        load = await loadgen(
            self._config(
                mode="open",
                path="/jobs",
                body="echo",
                rate=options.rate,
                duration=options.rate_duration,
            )
        )
        outcome.detail["load"] = load
        outcome.figures.update(
            {
                "rate.p50_ms": load["p50_ms"],
                "rate.p95_ms": load["p95_ms"],
                "rate.p99_ms": load["p99_ms"],
                "rate.errors": load["failed"],
                "rate.late_sends": load["late_sends"],
            }
        )

    # --- (c) ----------------------------------------------------------------------------------

    async def end_to_end(self, outcome: Outcome) -> None:
        count = self.options.e2e_jobs
        marker = await self.max_seq()
        proc = await start_loadgen(
            self._config(
                mode="count",
                path="/jobs",
                body="echo",
                count=count,
                concurrency=self.options.connections,
            )
        )
        try:
            done_at = await self.wait_completed(marker, count, timeout=max(120, count / 20))
        finally:
            load = await finish_loadgen(proc)
        outcome.detail["load"] = load
        if load["ok"] != count:
            raise RuntimeError(f"{count - load['ok']} submissions failed: {load['statuses']}")
        seconds = done_at - load["started_at"]
        outcome.detail["submission_s"] = load["elapsed_s"]
        outcome.detail["items"] = count
        outcome.figures.update(
            {
                "e2e.seconds": seconds,
                "e2e.jobs_per_s": count / seconds,
                "e2e.submitted_per_s": load["ok_per_s"],
            }
        )

    # --- (d) ----------------------------------------------------------------------------------

    async def latency(self, outcome: Outcome) -> None:
        options = self.options
        marker = await self.max_seq()
        load = await loadgen(
            self._config(
                mode="open",
                path="/jobs",
                body="echo",
                rate=options.latency_rate,
                duration=options.latency_duration,
            )
        )
        outcome.detail["load"] = load
        await self.wait_completed(marker, load["ok"], timeout=120)
        row = await self.sql.fetchrow(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms),"
            " max(ms), count(*)"
            " FROM (SELECT 1000 * extract(epoch FROM updated_at - created_at) AS ms"
            "       FROM jobs WHERE seq > $1 AND status = 'COMPLETED') AS done",
            marker,
        )
        p50, p95, p99 = (float(v) for v in row[0])
        outcome.detail["completed"] = row[2]
        outcome.detail["max_ms"] = float(row[1])
        outcome.figures.update(
            {
                "latency.p50_ms": p50,
                "latency.p95_ms": p95,
                "latency.p99_ms": p99,
                "latency.http_p99_ms": load["p99_ms"],
                "latency.errors": load["failed"],
            }
        )

    # --- (e) ----------------------------------------------------------------------------------

    async def batch(self, outcome: Outcome) -> None:
        options = self.options
        load = await loadgen(
            self._config(
                mode="count",
                path="/jobs/batch",
                body="batch",
                batch_size=options.batch_size,
                count=options.batch_requests,
                concurrency=options.batch_concurrency,
            )
        )
        outcome.detail["load"] = load
        outcome.detail["items"] = load["ok"] * options.batch_size
        outcome.figures.update(
            {
                "batch.jobs_per_s": load["ok_per_s"] * options.batch_size,
                "batch.request_p50_ms": load["p50_ms"],
                "batch.errors": load["failed"],
            }
        )

    # --- (g) ----------------------------------------------------------------------------------

    async def prepare_listing(self) -> dict[str, Any]:
        """A user with ``list_rows`` COMPLETED jobs, inserted straight into PostgreSQL."""
        (self.lister,) = await asyncio.to_thread(register_users, self.stack.api_url, 1, "lister")
        started = time.monotonic()
        await self.sql.execute(FILL_JOBS, self.lister.user_id, self.options.list_rows)
        await self.sql.execute("ANALYZE jobs")
        return {"rows": self.options.list_rows, "insert_s": round(time.monotonic() - started, 2)}

    async def listing(self, outcome: Outcome) -> None:
        options = self.options
        user = self.lister
        config = {
            "url": self.stack.api_url,
            "tokens": [user.token],
            "mode": "count",
            "method": "GET",
            "path": "/jobs?limit=50",
            "concurrency": 1,
            "expect": 200,
        }
        await loadgen({**config, "count": 20})  # warm the pool and the page cache
        load = await loadgen({**config, "count": options.list_requests})
        outcome.detail["load"] = load
        outcome.detail["items"] = load["requests"]
        outcome.figures.update(
            {
                "list.p50_ms": load["p50_ms"],
                "list.p99_ms": load["p99_ms"],
                "list.errors": load["failed"],
            }
        )

    # --- (f) ----------------------------------------------------------------------------------

    async def celery_end_to_end(self, outcome: Outcome, worker: subprocess.Popen[bytes]) -> None:
        if self.celery is None:
            raise RuntimeError("the celery scenario needs its infrastructure")
        count = self.options.e2e_jobs
        backend = await asyncpg.connect(self.celery.database_url)
        try:
            submitter = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "scripts.bench.celery_submit",
                str(count),
                cwd=REPO,
                env=celery_env(self.celery),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                done_at = await _wait_celery(backend, count + 1, worker, max(300, count / 10))
            finally:
                out, err = await submitter.communicate()
        finally:
            await backend.close()
        if submitter.returncode != 0:
            raise RuntimeError(f"celery submitter failed:\n{err.decode()[-3000:]}")
        submitted = json.loads(out.decode().strip().splitlines()[-1])
        outcome.detail["submitter"] = submitted
        outcome.detail["items"] = count
        seconds = done_at - submitted["started_at"]
        outcome.figures.update({"celery.seconds": seconds, "celery.jobs_per_s": count / seconds})


# Processes that make up the stack: the services and the servers they use.
STACK_GROUPS = (*stack.SERVICES, *stack.SERVER_COMMS.values())


def _cpu_per_item(name: str, outcome: Outcome, seconds: dict[str, float]) -> None:
    """CPU milliseconds per job (or request) that the API spent and, end to end, that the whole
    stack spent: unlike a rate, these hardly change when other programs share the machine."""
    items = outcome.detail.get("items")
    if not items or outcome.error or name == "celery":
        return
    outcome.figures[f"{name}.api_cpu_ms_per_item"] = 1000 * seconds.get("api", 0.0) / items
    if name == "e2e":  # the only window in which every job was also run and recorded
        whole = sum(seconds.get(group, 0.0) for group in STACK_GROUPS)
        outcome.figures[f"{name}.stack_cpu_ms_per_item"] = 1000 * whole / items


def _account_clients(outcome: Outcome, window_s: float) -> None:
    """The client processes' CPU (they report their own) over the whole measured window, so that
    it adds up with the services'; and no longer counted as "other"."""
    generator = outcome.detail.get("load", {}).get("generator", "")
    clients = {f"load generator ({generator})": "load", "celery submitter": "submitter"}
    for label, key in clients.items():
        cpu_s = outcome.detail.get(key, {}).get("cpu_s")
        if cpu_s is not None and window_s > 0:
            outcome.cpu[label] = round(100 * cpu_s / window_s, 1)
            outcome.cpu["other"] = round(max(0.0, outcome.cpu["other"] - outcome.cpu[label]), 1)


FILL_JOBS = """
INSERT INTO jobs (id, user_id, type, payload, status, priority, attempts, dispatch_attempt,
                  max_attempts, timeout_seconds, run_at, result, error, schedule_id,
                  cancel_requested, redeliveries, created_at, updated_at, started_at, finished_at)
SELECT gen_random_uuid(), $1::uuid, 'echo', p, 'COMPLETED', 5, 1, 1, 3, 300, t, p, NULL, NULL,
       false, 0, t, t, t, t
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT '{"n":' || g || '}' AS p,
                     now() - make_interval(secs => $2::int - g) AS t) AS v
"""


def celery_env(celery: CeleryInfra) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_CELERY_BROKER": celery.broker_url,
        "BENCH_CELERY_BACKEND": celery.backend_url,
        "PYTHONPATH": str(REPO),
    }


@dataclass
class Reference:
    """``reference_app`` running under uvicorn, and tokens it accepts."""

    service: stack.Service
    tokens: list[str]


REFERENCE_WORKERS = 2  # as the issue measured it


def start_reference(log_dir: Path, users: list[User]) -> Reference:
    secret = os.urandom(32).hex()
    port = stack.free_port()
    log = (log_dir / "reference.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "scripts.bench.reference_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(REFERENCE_WORKERS),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=REPO,
        env={**os.environ, "BENCH_REFERENCE_SECRET": secret, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    now = int(time.time())
    tokens = [
        jwt.encode(
            {"sub": user.user_id, "email": user.email, "iat": now, "exp": now + 3600},
            secret,
            algorithm="HS256",
        )
        for user in users
    ]
    # Its workers' CPU is counted through the supervisor (CpuMeter adds a process's children).
    reference = Reference(stack.Service("reference", port, proc, log), tokens)
    try:
        stack.wait_healthy(reference.service, log_dir)
    except BaseException:
        stop_reference(reference)
        raise
    return reference


def stop_reference(reference: Reference) -> None:
    stack.stop_service(reference.service)
    # Should the supervisor have been killed, its workers would still hold the port.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(reference.service.proc.pid, signal.SIGKILL)


def start_celery_worker(
    celery: CeleryInfra, pool: str, concurrency: int, log_dir: Path
) -> subprocess.Popen[bytes]:
    log = (log_dir / "celery-worker.log").open("ab")
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "scripts.bench.celery_app",
            "worker",
            "--loglevel",
            "WARNING",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
        ],
        cwd=REPO,
        env=celery_env(celery),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_celery_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)


async def _wait_celery(
    backend: asyncpg.Connection, count: int, worker: subprocess.Popen[bytes], timeout: float
) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done = await backend.fetchval(
                "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
            )
        except asyncpg.UndefinedTableError:
            done = 0  # the backend creates its table with the first result
        if done >= count:
            return time.time()
        if worker.poll() is not None:
            raise RuntimeError(f"the celery worker exited {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {count} celery results within {timeout} s")
        await asyncio.sleep(POLL_S)
