"""The measured stack: the four ``cloudtask`` services as processes, and what ``/proc`` says about
them (peak RSS, CPU time), plus the CPU time of the servers they use and of the load generator.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from scripts.bench.infra import Infra

CLOUDTASK = str(Path(sys.executable).with_name("cloudtask"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICES = ("api", "results", "scheduler", "worker")
# Processes of the servers the stack uses, by the kernel's command name.
SERVER_COMMS = {"postgres": "postgresql", "beam.smp": "rabbitmq", "redis-server": "redis"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(infra: Infra, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDTASK_")}
    settings = {
        "DATABASE_URL": infra.database_url,
        "RABBITMQ_URL": infra.rabbitmq_url,
        "REDIS_URL": infra.redis_url,
        "JWT_SECRET": secrets.token_hex(32),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        # Registering the bench's users is set-up, not a measured figure: cheap hashes.
        "BCRYPT_ROUNDS": "4",
        **extra,
    }
    env.update({f"CLOUDTASK_{name}": value for name, value in settings.items()})
    return env


def migrate(env: Mapping[str, str], log_dir: Path) -> None:
    with (log_dir / "migrate.log").open("wb") as log:
        subprocess.run(
            [CLOUDTASK, "migrate"],
            env=dict(env),
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_path(self) -> str:
        return "/actuator/health" if self.name == "api" else "/health"


def start_service(
    name: str, env: Mapping[str, str], log_dir: Path, args: Iterable[str] = ()
) -> Service:
    port = free_port()
    log = (log_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [CLOUDTASK, name, "--host", "127.0.0.1", "--port", str(port), *args],
        env=dict(env),
        cwd=log_dir,  # away from any .env file in the work tree
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Service(name, port, proc, log)


def wait_healthy(service: Service, log_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            tail = (log_dir / f"{service.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{service.name} exited {service.proc.returncode}:\n{tail}")
        try:
            if httpx.get(service.url + service.health_path, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} not healthy within {timeout} s")


def stop_service(service: Service, timeout: float = 30) -> None:
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(10)
    service.log.close()


@dataclass
class Stack:
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.services["api"].url

    def pids(self) -> dict[str, int]:
        return {name: service.proc.pid for name, service in self.services.items()}

    def check_alive(self) -> None:
        for service in self.services.values():
            if service.proc.poll() is not None:
                raise RuntimeError(f"{service.name} exited {service.proc.returncode}")


@contextmanager
def cloudtask_stack(
    infra: Infra, log_dir: Path, worker_concurrency: int | None = None
) -> Iterator[Stack]:
    extra = {"WORKER_CONCURRENCY": str(worker_concurrency)} if worker_concurrency else {}
    stack = Stack(service_env(infra, **extra))
    migrate(stack.env, log_dir)
    try:
        for name in SERVICES:
            stack.services[name] = start_service(name, stack.env, log_dir)
        for service in stack.services.values():
            wait_healthy(service, log_dir)
        yield stack
    finally:
        for service in reversed(list(stack.services.values())):
            stop_service(service)


# --- /proc ---------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """VmHWM, the process's peak resident set, in MiB (NaN once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_ticks(pid: int) -> int:
    """User plus system time of ``pid`` in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def server_pids(databases: Iterable[str] = ()) -> dict[str, list[int]]:
    """PostgreSQL, RabbitMQ and Redis processes on this machine, by server. With ``databases``,
    PostgreSQL backends serving other databases are listed apart, as "postgresql (other dbs)",
    so that another program's queries are not charged to the stack."""
    ours = set(databases)
    found: dict[str, list[int]] = {name: [] for name in SERVER_COMMS.values()}
    if ours:
        found[OTHER_DBS] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            group = SERVER_COMMS.get(comm)
            if group == "postgresql" and ours:
                group = _postgres_group(proc, ours)
        except OSError:
            continue
        if group is not None:
            found[group].append(int(proc.name))
    return found


OTHER_DBS = "postgresql (other dbs)"


def _postgres_group(proc: Path, ours: set[str]) -> str:
    # A backend's title is "postgres: [CLUSTER:] USER DATABASE HOST(PORT) STATE"; auxiliary
    # processes (checkpointer, walwriter, ...) have no client address and serve everyone.
    raw = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    words = [w for w in raw.split()[1:] if not w.endswith(":")]
    client = next((i for i, w in enumerate(words) if "(" in w or w == "[local]"), None)
    if client is not None and client >= 2:
        return "postgresql" if words[client - 1] in ours else OTHER_DBS
    return "postgresql"


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used by each watched process group between ``start`` and ``stop``, in percent of one
    core (so a single-threaded process at its limit shows about 100). ``groups`` is called at
    both ends, so processes that appear meanwhile (PostgreSQL backends) are counted; "other" is
    what the rest of the machine used."""

    def __init__(self, groups: Callable[[], Mapping[str, Iterable[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, int]] = {}
        self.machine_before = (0, 0)
        self.started = 0.0
        self.elapsed = 0.0
        self.seconds: dict[str, float] = {}

    def _sample(self) -> dict[str, dict[int, int]]:
        sample = {}
        for name, pids in self.groups().items():
            every = set(pids)
            for pid in pids:
                every.update(children(pid))
            sample[name] = {pid: cpu_ticks(pid) for pid in every}
        return sample

    def start(self) -> None:
        self.before = self._sample()
        self.machine_before = machine_busy_ticks()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = self.elapsed = time.monotonic() - self.started
        after = self._sample()
        busy, total = machine_busy_ticks()
        result = {}
        for name, ticks in after.items():
            before = self.before.get(name, {})
            used = sum(t - before.get(pid, 0) for pid, t in ticks.items() if t)
            self.seconds[name] = used / CLK_TCK
            result[name] = round(100 * used / CLK_TCK / elapsed, 1)
        cores = os.cpu_count() or 1
        share = (busy - self.machine_before[0]) / max(1, total - self.machine_before[1])
        machine = 100 * cores * share
        result["machine"] = round(machine, 1)
        ours = sum(v for k, v in result.items() if k not in ("machine", OTHER_DBS))
        result["other"] = round(max(0.0, machine - ours), 1)
        return result


def busy_elsewhere(seconds: float = 2.0) -> float:
    """CPU the machine uses while the bench does nothing, in percent of one core."""
    busy, total = machine_busy_ticks()
    time.sleep(seconds)
    busy2, total2 = machine_busy_ticks()
    return round(100 * (os.cpu_count() or 1) * (busy2 - busy) / max(1, total2 - total), 1)
