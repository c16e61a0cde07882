"""What ``worker_drain.py`` and ``results_drain.py`` share: their options, and running each
checkout in turn on one set of fresh infrastructure."""

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from scripts.bench.infra import Infra, cloudtask_infra

Figures = dict[str, float]
Drain = Callable[[Infra, str | None, Path], Figures]


def parser(doc: str) -> argparse.ArgumentParser:
    """``--jobs``, ``--repeat`` and ``--pythonpath``; a drain adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs to drain [20000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs [3]")
    parser.add_argument("--pythonpath", action="append", default=[], help="compare versions")
    return parser


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
