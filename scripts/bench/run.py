"""CloudTask's benchmark (issue 6): one command that prepares isolated infrastructure, starts the
four services as processes, drives them from separate load-generator processes, and prints a
table of figures against the issue's targets; the JSON goes to ``bench-results/<timestamp>.json``.

    .venv/bin/python -m scripts.bench.run                 # everything, once (about 6 minutes)
    .venv/bin/python -m scripts.bench.run --repeat 3      # the medians of three runs
    .venv/bin/python -m scripts.bench.run --quick         # a short smoke run
    .venv/bin/python -m scripts.bench.run --only api,e2e --skip-celery

See docs/benchmarks.md for what each figure means.
"""

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `scripts.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.bench import infra as bench_infra
from scripts.bench import report, stack
from scripts.bench.scenarios import (
    REPO,
    Bench,
    Options,
    Outcome,
    start_celery_worker,
    start_reference,
    stop_celery_worker,
    stop_reference,
)

SCENARIOS = ("ref", "api", "rate", "e2e", "latency", "celery", "list", "batch")
BUSY_WARNING_PCT = 20
# Scenarios that leave jobs to run: the next one waits until they have run.
LEAVE_BACKLOG = {"api", "rate", "e2e", "latency", "batch"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench.run",
        description="Benchmark CloudTask against the targets of issue 6.",
    )
    parser.add_argument(
        "--only", help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--skip-celery", action="store_true", help="leave out the Celery run")
    parser.add_argument("--quick", action="store_true", help="short smoke run (smaller figures)")
    parser.add_argument("--repeat", type=int, default=1, help="runs to take the median of")
    parser.add_argument("--duration", type=float, help="(a) seconds at 64 connections [20]")
    parser.add_argument("--connections", type=int, default=64, help="(a), (c) connections [64]")
    parser.add_argument("--rate", type=float, default=300, help="(b) requests/s [300]")
    parser.add_argument("--rate-duration", type=float, help="(b) seconds [60]")
    parser.add_argument("--e2e-jobs", type=int, help="(c), (f) jobs [5000]")
    parser.add_argument("--latency-rate", type=float, default=100, help="(d) jobs/s [100]")
    parser.add_argument("--latency-duration", type=float, help="(d) seconds [30]")
    parser.add_argument("--batch-requests", type=int, help="(e) requests [40]")
    parser.add_argument("--batch-size", type=int, default=1000, help="(e) jobs a request [1000]")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="(e) at once [4]")
    parser.add_argument("--list-rows", type=int, help="(g) the user's jobs [1000000]")
    parser.add_argument("--list-requests", type=int, help="(g) requests [300]")
    parser.add_argument("--users", type=int, default=16, help="users the load is spread over [16]")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator for (a): wrk where installed (auto), or the Python one",
    )
    parser.add_argument(
        "--worker-concurrency", type=int, help="CLOUDTASK_WORKER_CONCURRENCY (default: 16)"
    )
    parser.add_argument("--celery-pool", default="prefork", help="celery worker --pool [prefork]")
    parser.add_argument(
        "--celery-concurrency", type=int, default=2, help="celery worker --concurrency [2]"
    )
    parser.add_argument("--drain-timeout", type=float, default=600, help="seconds [600]")
    parser.add_argument("--profile", action="store_true", help="py-spy each service (slower)")
    parser.add_argument("--output", type=Path, help="JSON file [bench-results/<timestamp>.json]")
    return parser


def make_options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    return Options(
        quick=quick,
        duration=pick(args.duration, 20.0, 5.0),
        rate=args.rate,
        rate_duration=pick(args.rate_duration, 60.0, 10.0),
        e2e_jobs=pick(args.e2e_jobs, 5000, 1000),
        latency_rate=args.latency_rate,
        latency_duration=pick(args.latency_duration, 30.0, 10.0),
        batch_requests=pick(args.batch_requests, 40, 6),
        batch_size=args.batch_size,
        batch_concurrency=args.batch_concurrency,
        list_rows=pick(args.list_rows, 1_000_000, 100_000),
        list_requests=pick(args.list_requests, 300, 100),
        connections=args.connections,
        users=args.users,
        generator=args.generator,
        celery_pool=args.celery_pool,
        celery_concurrency=args.celery_concurrency,
        drain_timeout=args.drain_timeout,
        profile=args.profile,
        warmup_requests=100 if quick else 300,
    )


def selected_scenarios(args: argparse.Namespace) -> list[str]:
    wanted = SCENARIOS if not args.only else [s.strip() for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return [s for s in SCENARIOS if s in wanted and not (s == "celery" and args.skip_celery)]


def say(text: str) -> None:
    print(text, flush=True)


# --- one run ------------------------------------------------------------------------------------


async def _scenarios(
    bench: Bench, selected: Sequence[str], celery_concurrency: tuple[str, int]
) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    await bench.warmup()
    for position, name in enumerate(selected, 1):
        started = time.monotonic()
        if name == "celery":
            outcome = await _celery(bench, *celery_concurrency)
        elif name == "ref":
            outcome = await _reference(bench)
        elif name == "list":
            prepared = await bench.prepare_listing()  # not part of the measured window
            outcome = await bench.measure(name, bench.listing)
            outcome.detail.update(prepared)
        else:
            outcome = await bench.measure(name, getattr(bench, METHODS[name]))
        last = position == len(selected)
        if name in LEAVE_BACKLOG and outcome.error is None and not last:
            try:
                outcome.detail["drain_after"] = await bench.drain()
            except RuntimeError as exc:
                outcome.error = f"draining: {exc}"
        outcomes[name] = outcome
        summary = ", ".join(f"{k} {report.fmt(v)}" for k, v in outcome.figures.items())
        status = f"FAILED: {outcome.error}" if outcome.error else summary
        say(f"  {name:<8} {time.monotonic() - started:6.1f} s  {status}")
    return outcomes


METHODS = {
    "api": "api_closed_loop",
    "rate": "api_open_loop",
    "e2e": "end_to_end",
    "latency": "latency",
    "batch": "batch",
    "list": "listing",
}


async def _reference(bench: Bench) -> Outcome:
    app = await asyncio.to_thread(start_reference, bench.log_dir, bench.users)
    try:
        return await bench.measure(
            "ref",
            lambda out: bench.reference(out, app),
            extra_pids={"reference endpoint": [app.service.proc.pid]},
        )
    finally:
        stop_reference(app)


async def _celery(bench: Bench, pool: str, concurrency: int) -> Outcome:
    if bench.celery is None:
        raise RuntimeError("the celery scenario needs its infrastructure")
    worker = start_celery_worker(bench.celery, pool, concurrency, bench.log_dir)
    try:
        outcome = await bench.measure(
            "celery",
            lambda out: bench.celery_end_to_end(out, worker),
            extra_pids={"celery worker": [worker.pid]},
        )
        pids = [worker.pid, *stack.children(worker.pid)]
        outcome.figures["rss.celery_worker_mb"] = sum(stack.peak_rss_mb(p) for p in pids)
        outcome.detail["celery_worker_processes"] = len(pids)
    finally:
        stop_celery_worker(worker)
    return outcome


async def _run_async(
    options: Options,
    selected: Sequence[str],
    cloudtask: stack.Stack,
    infra: bench_infra.Infra,
    celery: bench_infra.CeleryInfra | None,
    log_dir: Path,
) -> dict[str, Any]:
    async with Bench(options, cloudtask, infra, log_dir, celery) as bench:
        outcomes = await _scenarios(
            bench, selected, (options.celery_pool, options.celery_concurrency)
        )
    figures: dict[str, float] = {}
    for outcome in outcomes.values():
        figures.update(outcome.figures)
    for name, pid in cloudtask.pids().items():
        figures[f"rss.{name}_mb"] = stack.peak_rss_mb(pid)
    report.add_ratios(figures)
    return {
        "figures": figures,
        "scenarios": {name: dataclasses.asdict(o) for name, o in outcomes.items()},
    }


def run_once(
    options: Options, selected: Sequence[str], log_dir: Path, worker_concurrency: int | None
) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as resources:
        say("  preparing a database, a vhost and a Redis database; starting the services")
        infra = resources.enter_context(bench_infra.cloudtask_infra())
        celery = (
            resources.enter_context(bench_infra.celery_infra()) if "celery" in selected else None
        )
        cloudtask = resources.enter_context(
            stack.cloudtask_stack(infra, log_dir, worker_concurrency)
        )
        return asyncio.run(_run_async(options, selected, cloudtask, infra, celery, log_dir))


# --- output -------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON has no NaN: missing figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = make_options(args)
    selected = selected_scenarios(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or REPO / "bench-results" / f"{stamp}.json"
    log_root = output.with_suffix("")
    say(f"CloudTask benchmark: {', '.join(selected)}; {args.repeat} run(s); logs in {log_root}")
    busy = stack.busy_elsewhere()
    if busy > BUSY_WARNING_PCT:
        say(
            f"WARNING: before starting, other programs use {busy:.0f}% of one core "
            f"(of {100 * (os.cpu_count() or 1)}); the figures will be lower than on a quiet machine"
        )
    runs = []
    for number in range(1, args.repeat + 1):
        say(f"run {number} of {args.repeat}")
        runs.append(run_once(options, selected, log_root / f"run{number}", args.worker_concurrency))
    figures = report.combine([run["figures"] for run in runs])
    errors = [
        f"run {n}: {name}: {scenario['error']}"
        for n, run in enumerate(runs, 1)
        for name, scenario in run["scenarios"].items()
        if scenario["error"]
    ]
    say("")
    say(report.table(figures, args.repeat))
    say("")
    say(report.cpu_table(runs[-1]["scenarios"]))
    for error in errors:
        say(f"ERROR {error}")
    result = {
        "started_at": stamp,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "scenarios": selected,
        "repeat": args.repeat,
        "options": dataclasses.asdict(options),
        "machine": {**machine(), "busy_before_start_pct": busy},
        "figures": figures,
        "runs": runs,
        "errors": errors,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")
    say(f"\nwrote {output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
