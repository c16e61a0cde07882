"""Starting ``cloudtask`` commands as real processes, the way an operator would."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from tests.e2e.client import ApiClient

CLOUDTASK = str(Path(sys.executable).with_name("cloudtask"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """The test's environment without any CLOUDTASK_ variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDTASK_")}
    env.update({f"CLOUDTASK_{name.upper()}": value for name, value in settings.items()})
    return env


class Process:
    """One ``cloudtask`` command; its output goes to a log file the test can read."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.args = args
        self.port = int(args[args.index("--port") + 1]) if "--port" in args else None
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            [CLOUDTASK, *args],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(
        self, path: str, timeout: float = 30, statuses: tuple[int, ...] = (200,)
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=3).status_code in statuses:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.args} not healthy within {timeout} s:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def kill_group(self) -> None:
        """SIGKILL the process and every one it started (its session), as a test ends."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.args} did not stop on SIGTERM within {timeout} s"
            ) from None
        finally:
            self._log.close()


class Processes:
    """Every process a test started; all are stopped at the end of the test."""

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env = dict(env)
        self.logs = logs
        self.started: list[Process] = []
        self.clients: list[ApiClient] = []

    def client(self, api: Process) -> ApiClient:
        """A registered user's API client on ``api``, closed with the processes."""
        client = ApiClient(api.url)
        self.clients.append(client)
        return client

    def start(
        self,
        command: str,
        *args: str,
        health: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        up_even_if_degraded: bool = False,
    ) -> Process:
        process = self._launch([command, *args], env, cwd)
        self._wait_up(process, health, up_even_if_degraded)
        return process

    def start_side_by_side(
        self,
        *commands: str | tuple[str, ...],
        cwd: Path | None = None,
        up_even_if_degraded: bool = False,
    ) -> list[Process]:
        """Start several commands at once (each a name, or a name and its arguments), then wait
        until each is up: a service spends most of its second of starting in imports, so on two
        cores four take about half as long as one after another. ``started`` lists them in the
        order given."""
        launched = [
            self._launch([command] if isinstance(command, str) else list(command), None, cwd)
            for command in commands
        ]
        for process in launched:
            self._wait_up(process, None, up_even_if_degraded)
        return launched

    def _launch(
        self, command: list[str], env: Mapping[str, str] | None, cwd: Path | None
    ) -> Process:
        name = f"{command[0]}-{len(self.started)}"
        process = Process(
            [command[0], "--host", "127.0.0.1", "--port", str(free_port()), *command[1:]],
            {**self.env, **(env or {})},
            self.logs / f"{name}.log",
            cwd=cwd,
        )
        self.started.append(process)
        return process

    @staticmethod
    def _wait_up(process: Process, health: str | None, up_even_if_degraded: bool) -> None:
        default_health = "/actuator/health" if process.args[0] in ("api", "dev") else "/health"
        statuses = (200, 503) if up_even_if_degraded else (200,)
        process.wait_healthy(health or default_health, statuses=statuses)

    def stop_all(self) -> None:
        for client in self.clients:
            client.close()
        for process in reversed(self.started):
            process.kill_group()
            process.close()


@contextmanager
def processes(env: Mapping[str, str], logs: Path) -> Iterator[Processes]:
    group = Processes(env, logs)
    try:
        yield group
    finally:
        group.stop_all()
