"""The benchmark suite (scripts/bench) in its smallest run: it must keep working, not be fast.

It runs without the ``bench`` extra (no Celery, aiohttp or wrk needed), so CI needs nothing more.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_quickest_bench_run_prints_its_table_and_writes_json_with_numeric_figures(
    tmp_path: Path,
) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench.run",
            "--quick",
            "--only",
            "ref,api,e2e",
            "--skip-celery",
            "--generator",
            "python",
            "--duration",
            "1",
            "--e2e-jobs",
            "100",
            "--users",
            "2",
            "--output",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "API job creations, 64 connections" in done.stdout
    assert "End to end: echo jobs/s" in done.stdout
    assert "CPU while each scenario ran" in done.stdout
    result = json.loads(output.read_text())
    assert result["errors"] == []
    assert "Reference: bare POST + JWT" in done.stdout
    figures = (
        "ref.requests_per_s", "api.creations_per_s", "api.p99_ms", "ratio.api_vs_reference",
        "e2e.jobs_per_s", "e2e.seconds", "ratio.e2e_vs_reference",
    )  # fmt: skip
    for name in figures:
        value = result["figures"][name]["value"]
        assert isinstance(value, float | int) and math.isfinite(value) and value > 0, name
    for service in ("api", "worker", "results", "scheduler"):
        assert result["figures"][f"rss.{service}_mb"]["value"] > 0
    assert result["figures"]["e2e.jobs_per_s"]["target"] == 1000
    assert result["figures"]["ratio.api_vs_reference"]["target"] == pytest.approx(2 / 3)
