"""``--profile``: py-spy samples each service while a scenario runs (py-spy is in the bench extra).

Each service's collapsed stacks go to ``<log dir>/profiles/<scenario>/<service>.txt`` (load
them into speedscope or flamegraph.pl); the JSON keeps the functions that used the most CPU
themselves ("self" samples, idle time excluded), the same by package, and CloudTask's own
functions by the samples under them ("inclusive"): usually enough to see what limits a figure.
Sampling costs a little CPU, so a profiled run's figures are a bit lower than an unprofiled one's.
"""

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE_HZ = 100
TOP = 10


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: pip install -e '.[bench]'")
    return found


class Profiler:
    def __init__(self, pids: dict[str, int], out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.outputs = {name: out_dir / f"{name}.txt" for name in pids}
        self.procs = {
            name: subprocess.Popen(
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE_HZ),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(self.outputs[name]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }

    def stop(self) -> dict[str, Any]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return {name: summarize(path) for name, path in self.outputs.items() if path.exists()}


def summarize(path: Path) -> dict[str, Any]:
    """Total samples, and the functions with the most self samples (share of all samples)."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] += int(count)
        by_package[package(leaf)] += int(count)
        for frame in {f for f in stack.split(";") if "(cloudtask/" in f}:
            ours[frame] += int(count)

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(TOP)]

    return {
        "samples": total,
        "rate_hz": RATE_HZ,
        "file": str(path),
        "top_self_pct": shares(own) if total else [],
        "self_by_package_pct": shares(by_package) if total else [],
        "cloudtask_inclusive_pct": shares(ours) if total else [],
    }


def package(frame: str) -> str:
    """Where a frame ``function (package/module.py:line)`` lives: its top-level package
    (``cloudtask.<subpackage>`` for ours), or ``stdlib:module`` for a bare module name."""
    path = frame.rpartition("(")[2].rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if len(parts) == 1:
        return f"stdlib:{parts[0].removesuffix('.py')}" if parts[0] else "(native)"
    if parts[0] == "cloudtask" and len(parts) > 2:
        return f"cloudtask.{parts[1]}"
    return parts[0].removesuffix(".py")
