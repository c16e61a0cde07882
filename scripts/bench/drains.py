"""What ``worker_drain.py`` and ``results_drain.py`` share: their options, measuring one service
while it drains, and running each checkout in turn on one set of fresh infrastructure."""

import argparse
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from scripts.bench.infra import Infra, cloudtask_infra
from scripts.bench.stack import CpuMeter, start_service, stop_service, wait_healthy

Figures = dict[str, float]
Drain = Callable[[Infra, str | None, Path], Figures]


def parser(doc: str) -> argparse.ArgumentParser:
    """``--jobs``, ``--repeat`` and ``--pythonpath``; a drain adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs to drain [20000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs [3]")
    parser.add_argument("--pythonpath", action="append", default=[], help="compare versions")
    return parser


def drain_service(
    name: str,
    env: Mapping[str, str],
    log_dir: Path,
    drained: Callable[[], None],
    others: Callable[[], Mapping[str, Iterable[int]]] = dict,
) -> tuple[float, dict[str, float]]:
    """Start the service ``name``; from its first healthy answer (its start-up is not a job's
    cost) until ``drained`` returns, measure its CPU and that of ``others``. Returns the seconds
    taken and the CPU seconds of each, the service under its own name."""
    service = start_service(name, env, log_dir)
    try:
        wait_healthy(service, log_dir)
        meter = CpuMeter(lambda: {name: [service.proc.pid], **others()})
        meter.start()
        drained()
        meter.stop()
    finally:
        stop_service(service)
    return meter.elapsed, meter.seconds


def figures(jobs: int, seconds: float, cpu_seconds: float) -> Figures:
    return {
        "jobs_per_s": jobs / seconds,
        "cpu_ms_per_job": 1000 * cpu_seconds / jobs,
        "cpu_pct": 100 * cpu_seconds / seconds,
    }


def run_in_turn(
    options: argparse.Namespace, drain: Drain, describe: Callable[[Figures], str]
) -> None:
    """Each run drains once with every ``--pythonpath`` in turn; a line and a JSON line each."""
    versions = options.pythonpath or [None]
    with cloudtask_infra() as infra, tempfile.TemporaryDirectory() as logs:
        for run in range(1, options.repeat + 1):
            for version in versions:
                figures = drain(infra, version, Path(logs))
                print(f"run {run}  {version or 'installed':30}  {describe(figures)}", flush=True)
                print(json.dumps({"run": run, "version": version, **figures}), flush=True)
