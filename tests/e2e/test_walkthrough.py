"""The README's curl walkthrough, run verbatim against started processes."""

import json
import re
import subprocess
from pathlib import Path

from tests.e2e.processes import Process, Processes, clean_env, processes

README = Path(__file__).parents[2] / "README.md"


def walkthrough() -> str:
    match = re.search(
        r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->",
        README.read_text(),
        re.S,
    )
    assert match is not None, "the README has no walkthrough block"
    return match.group(1)


def run_walkthrough(api: Process) -> list[str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        env={**clean_env(), "CLOUDTASK": api.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def check_outputs(lines: list[str]) -> dict[str, object]:
    registered, listing, job = (json.loads(line) for line in lines)
    assert registered["token"] == registered["accessToken"]
    assert registered["tokenType"] == "Bearer"
    assert [item["id"] for item in listing] == [job["id"]]
    assert job["type"] == "echo" and job["payload"] == {"hello": "world"}
    assert job["priority"] == 7
    return job


def test_the_walkthrough_works_against_cloudtask_dev(tmp_path: Path) -> None:
    with processes(clean_env(bcrypt_rounds="4"), tmp_path) as group:
        dev = group.start("dev", "--db", str(tmp_path / "dev.db"))
        job = check_outputs(run_walkthrough(dev))
        assert job["status"] in {"PENDING", "RUNNING", "COMPLETED"}
        assert (tmp_path / "dev.db.secret").exists()


def test_the_walkthrough_works_against_the_api_on_postgres_rabbitmq_and_redis(
    procs: Processes,
) -> None:
    api = procs.start("api")
    job = check_outputs(run_walkthrough(api))
    assert job["status"] == "PENDING"
