"""The closed-loop API figure through wrk (C, one thread), where wrk is installed.

wrk spends a few microseconds of CPU per request, a tenth of what the Python generator spends, so
on a 2-core machine it leaves more of the CPU to the services. A Lua script gives each request a
real user's JWT (cycling through the users) and a distinct ``echo`` body, and prints the summary
as one JSON line that this module reads back.
"""

import json
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

LUA = """
local tokens = {%(tokens)s}
local counter = 0
local prefix = "Bearer "

request = function()
  counter = counter + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = prefix .. tokens[(counter %% #tokens) + 1]
  return wrk.format("POST", "/jobs", headers,
    '{"type":"echo","payload":{"n":' .. counter .. '}}')
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect":%%d,' ..
    '"read":%%d,"write":%%d,"timeout":%%d,"p50_us":%%d,"p95_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def closed_loop(url: str, tokens: list[str], connections: int, duration: float) -> dict[str, Any]:
    script = LUA % {"tokens": ", ".join(json.dumps(token) for token in tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.lua"
        path.write_text(script)
        cpu_before = _children_cpu()
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "30s",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 120,
            check=True,
        )
        cpu_s = _children_cpu() - cpu_before
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    elapsed = raw["duration_us"] / 1e6
    socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    ok = raw["requests"] - raw["status_errors"]
    return {
        "requests": raw["requests"],
        "ok": ok,
        "failed": raw["status_errors"] + socket_errors,
        "errors": {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]},
        "elapsed_s": elapsed,
        "ok_per_s": ok / elapsed if elapsed else 0.0,
        "cpu_s": cpu_s,
        "cpu_pct": 100 * cpu_s / elapsed if elapsed else 0.0,
        "cpu_us_per_request": 1e6 * cpu_s / raw["requests"] if raw["requests"] else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "generator": "wrk",
    }
