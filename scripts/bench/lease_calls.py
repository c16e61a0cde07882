"""The client CPU of a worker's lease writes: ``RedisKV.claim_many_and_get`` (as the worker calls
it for first deliveries; ``set_many_and_get`` in versions before it) for bursts of 1, 8 and 32
leases (each with its cancel flag read back), against the local Redis.
``python -m scripts.bench.lease_calls [--calls N] [--pythonpath DIR ...]``.

Each burst size is called ``--calls`` times after a warm-up; the figure is the calling process's
CPU per lease, the part of the worker's cost that the way the call is made decides. With
``--pythonpath`` each checkout runs in a process of its own, in turn, ``--repeat`` times.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from scripts.bench.infra import redis_database

BURSTS = (1, 8, 32)
WARMUP = 50


async def _measure(redis_url: str, calls: int) -> dict[str, float]:
    from cloudtask.kv.redis import RedisKV  # noqa: PLC0415 (imported from the version measured)

    kv = RedisKV(redis_url)
    figures: dict[str, float] = {}

    async def take(leases: dict[str, bytes], flags: list[str]) -> None:
        if hasattr(kv, "claim_many_and_get"):
            # The worker's own value as the free one: every claim writes, as a first one does.
            await kv.claim_many_and_get(leases, ttl=30, free=b"worker-1", forced={}, get_keys=flags)
        else:
            await kv.set_many_and_get(leases, ttl=30, get_keys=flags)

    try:
        for burst in BURSTS:
            leases = {f"lease:job-{i}:1": b"worker-1" for i in range(burst)}
            flags = [f"cancel:job-{i}" for i in range(burst)]
            for _ in range(WARMUP):
                await take(leases, flags)
            started = time.process_time()
            for _ in range(calls):
                await take(leases, flags)
            spent = time.process_time() - started
            figures[f"cpu_us_per_lease_{burst}"] = 1e6 * spent / (calls * burst)
    finally:
        await kv.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per burst size [2000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs [3]")
    parser.add_argument("--pythonpath", action="append", default=[], help="compare versions")
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)  # a child's run
    options = parser.parse_args()
    if options.redis_url:
        print(json.dumps(asyncio.run(_measure(options.redis_url, options.calls))))
        return
    with redis_database() as redis_url:
        for run in range(1, options.repeat + 1):
            for version in options.pythonpath or [None]:
                env = {**os.environ, **({"PYTHONPATH": version} if version else {})}
                child = [sys.executable, "-m", "scripts.bench.lease_calls"]
                args = ["--redis-url", redis_url, "--calls", str(options.calls)]
                out = subprocess.run(
                    [*child, *args], env=env, check=True, capture_output=True, text=True
                ).stdout
                figures = json.loads(out)
                line = "  ".join(
                    f"{burst:>2} at once {figures[f'cpu_us_per_lease_{burst}']:6.1f} us"
                    for burst in BURSTS
                )
                print(f"run {run}  {version or 'installed':30}  CPU per lease: {line}", flush=True)
                print(json.dumps({"run": run, "version": version, **figures}), flush=True)


if __name__ == "__main__":
    main()
