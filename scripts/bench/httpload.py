"""A lean HTTP/1.1 load generator on asyncio (uvloop where installed), with no dependency.

It runs as its own process (``python -m scripts.bench.httpload CONFIG_JSON``) so that it competes
with the services only for CPU, never for their event loop, and prints one JSON line with what it
measured, its own CPU time included (so the report can tell whether the generator was the limit).

It speaks just enough HTTP/1.1 for CloudTask's API: keep-alive connections, ``Content-Length`` or
chunked bodies. It costs a fraction of what aiohttp or httpx spend per request (see
docs/benchmarks.md), and needs nothing beyond the standard library, so the CI smoke test can run it.

Modes:

- ``closed``: ``concurrency`` connections, each sending its next request as soon as the previous
  one is answered, for ``duration`` seconds after ``warmup`` seconds that are not counted;
- ``open``: requests sent at a fixed ``rate`` for ``duration`` seconds whatever the answers, on as
  many connections as needed; latency counts from the time each request was due, so a late send is
  charged to the server (no coordinated omission);
- ``count``: exactly ``count`` requests over ``concurrency`` connections, as fast as they go.
"""

import asyncio
import itertools
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from scripts.bench.stats import summary_ms

MAX_OPEN_CONNECTIONS = 1024
REQUEST_TIMEOUT_S = 30.0
# uvicorn closes a keep-alive connection idle for 5 s; one idle for this long is not reused.
MAX_IDLE_S = 3.0


class HttpError(Exception):
    """The server's answer was not HTTP/1.1 this client understands."""


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.last_used = time.monotonic()

    def reusable(self) -> bool:
        """Still open on both ends, and not idle long enough for the server to close it."""
        fresh = time.monotonic() - self.last_used < MAX_IDLE_S
        return fresh and not self.closed and not self.reader.at_eof()

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"\r\ntransfer-encoding: chunked" in lower:
            body = await self._chunked()
        else:
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise HttpError("response without Content-Length")
            end = lower.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(lower[at + 17 : end]))
        if b"\r\nconnection: close" in lower:
            self.close()
        self.last_used = time.monotonic()
        return status, body

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


@dataclass
class Target:
    host: str
    port: int
    method: str
    path: str
    tokens: list[str]
    body: Callable[[int], bytes | None]
    headers: dict[str, str] = field(default_factory=dict)

    def requests(self) -> Iterator[bytes]:
        """Request bytes, cycling through the users' tokens."""
        for n in itertools.count():
            token = self.tokens[n % len(self.tokens)]
            body = self.body(n)
            lines = [
                f"{self.method} {self.path} HTTP/1.1",
                f"Host: {self.host}:{self.port}",
                f"Authorization: Bearer {token}",
                *(f"{name}: {value}" for name, value in self.headers.items()),
            ]
            if body is not None:
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            yield ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def echo_body(n: int) -> bytes:
    return b'{"type":"echo","payload":{"n":%d}}' % n


def batch_body(size: int) -> Callable[[int], bytes]:
    def body(n: int) -> bytes:
        jobs = b",".join(echo_body(n * size + i) for i in range(size))
        return b'{"jobs":[' + jobs + b"]}"

    return body


@dataclass
class Recorder:
    """What the generator saw; latencies in seconds."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_sends: int = 0
    first_send: float = 0.0
    last_answer: float = 0.0

    def result(self, expect: int, elapsed: float, cpu_s: float) -> dict[str, Any]:
        ok = self.statuses.get(expect, 0)
        bad = sum(self.statuses.values()) - ok + sum(self.errors.values())
        return {
            "requests": len(self.latencies),
            "ok": ok,
            "failed": bad,
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "late_sends": self.late_sends,
            "elapsed_s": elapsed,
            "ok_per_s": ok / elapsed if elapsed > 0 else 0.0,
            "started_at": self.first_send,
            "finished_at": self.last_answer,
            "cpu_s": cpu_s,
            "cpu_pct": 100 * cpu_s / elapsed if elapsed > 0 else 0.0,
            "cpu_us_per_request": 1e6 * cpu_s / len(self.latencies) if self.latencies else 0.0,
            **summary_ms(self.latencies),
        }


async def _send(
    conn: Connection, data: bytes, recorder: Recorder, due: float, record: bool = True
) -> None:
    try:
        status, _ = await asyncio.wait_for(conn.request(data), REQUEST_TIMEOUT_S)
    except TimeoutError:
        conn.close()
        recorder.errors["timeout"] += 1
        return
    except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
        conn.close()
        recorder.errors[type(exc).__name__] += 1
        return
    now = time.perf_counter()
    if record:
        recorder.latencies.append(now - due)
        recorder.statuses[status] += 1
        recorder.last_answer = time.time()


async def closed_loop(
    target: Target, concurrency: int, duration: float, warmup: float, recorder: Recorder
) -> float:
    requests = target.requests()
    start = time.perf_counter()
    counted_from = start + warmup
    stop_at = counted_from + duration

    async def user() -> None:
        conn = await Connection.open(target.host, target.port)
        try:
            while (sent := time.perf_counter()) < stop_at:
                if conn.closed:
                    conn = await Connection.open(target.host, target.port)
                record = sent >= counted_from
                if record and not recorder.first_send:
                    recorder.first_send = time.time()
                await _send(conn, next(requests), recorder, sent, record)
        finally:
            conn.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return time.perf_counter() - counted_from


async def open_loop(target: Target, rate: float, duration: float, recorder: Recorder) -> float:
    requests = target.requests()
    idle = [await Connection.open(target.host, target.port) for _ in range(16)]
    in_flight: set[asyncio.Task[None]] = set()
    opened = len(idle)

    async def one(due: float, data: bytes) -> None:
        nonlocal opened
        while idle and not idle[-1].reusable():
            idle.pop().close()
            opened -= 1
        if idle:
            conn = idle.pop()
        elif opened < MAX_OPEN_CONNECTIONS:
            opened += 1
            try:
                conn = await Connection.open(target.host, target.port)
            except OSError as exc:
                opened -= 1
                recorder.errors[type(exc).__name__] += 1
                return
        else:
            recorder.errors["no_free_connection"] += 1
            return
        await _send(conn, data, recorder, due)
        if conn.closed:
            opened -= 1
        else:
            idle.append(conn)

    start = time.perf_counter()
    recorder.first_send = time.time()
    for n in range(int(rate * duration)):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            recorder.late_sends += 1
        task = asyncio.create_task(one(due, next(requests)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return elapsed


async def count_loop(target: Target, concurrency: int, count: int, recorder: Recorder) -> float:
    requests = target.requests()
    remaining = count
    conns = [await Connection.open(target.host, target.port) for _ in range(concurrency)]
    start = time.perf_counter()
    recorder.first_send = time.time()

    async def user(conn: Connection) -> None:
        nonlocal remaining
        try:
            while remaining > 0:
                remaining -= 1
                if conn.closed:
                    conn = await Connection.open(target.host, target.port)
                await _send(conn, next(requests), recorder, time.perf_counter())
        finally:
            conn.close()

    await asyncio.gather(*(user(conn) for conn in conns))
    return time.perf_counter() - start


def _target(config: dict[str, Any]) -> Target:
    url = urlsplit(config["url"])
    kind = config.get("body")
    body: Callable[[int], bytes | None]
    if kind == "echo":
        body = echo_body
    elif kind == "batch":
        body = batch_body(int(config.get("batch_size", 1000)))
    else:
        body = lambda _n: None  # noqa: E731 - a body-less request
    return Target(
        host=url.hostname or "127.0.0.1",
        port=url.port or 80,
        method=config.get("method", "POST"),
        path=config["path"],
        tokens=config["tokens"],
        body=body,
        headers=config.get("headers", {}),
    )


async def run(config: dict[str, Any]) -> dict[str, Any]:
    target = _target(config)
    recorder = Recorder()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    mode = config["mode"]
    concurrency = int(config.get("concurrency", 64))
    if mode == "closed":
        elapsed = await closed_loop(
            target, concurrency, config["duration"], config.get("warmup", 0.0), recorder
        )
    elif mode == "open":
        elapsed = await open_loop(target, config["rate"], config["duration"], recorder)
    elif mode == "count":
        elapsed = await count_loop(target, concurrency, int(config["count"]), recorder)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    result = recorder.result(int(config.get("expect", 201)), elapsed, cpu_s)
    result["generator"] = "python-asyncio" + ("+uvloop" if _uvloop() else "")
    return result


def _uvloop() -> bool:
    try:
        import uvloop  # noqa: F401, PLC0415 - optional, as in cloudtask.serving
    except ImportError:
        return False
    return True


def main() -> None:
    config = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    if _uvloop():
        import uvloop  # noqa: PLC0415 - optional

        result = uvloop.run(run(config))
    else:
        result = asyncio.run(run(config))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
