"""Starting services: settings refused at start, and `cloudtask dev` running jobs end to end."""

import secrets
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from cloudtask.dev import KV_SAVED_EVERY
from tests import infra
from tests.e2e.probes import metric
from tests.e2e.processes import CLOUDTASK, Processes, clean_env, free_port, processes


def _cloudtask(
    args: list[str], env: dict[str, str], *, cwd: Path | None = None
) -> "subprocess.CompletedProcess[str]":
    """Run ``cloudtask *args`` to its end (a minute at most); its output as text."""
    return subprocess.run(
        [CLOUDTASK, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["api", "worker", "results", "scheduler"])
@pytest.mark.parametrize("secret", [None, "too-short"])
def test_a_service_refuses_to_start_without_a_strong_jwt_secret(
    command: str, secret: str | None
) -> None:
    env = clean_env(**({"jwt_secret": secret} if secret else {}))
    done = _cloudtask(
        [command, "--port", "0"],
        env,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "CLOUDTASK_JWT_SECRET" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("name", "url"),
    [
        # Each form is in the settings' unit tests; here, that a service stops on them.
        ("database_url", "mysql://ct:s3cret@127.0.0.1/ct"),
        ("rabbitmq_url", "http://ct:s3cret@127.0.0.1/"),
    ],
)
def test_a_mistyped_connection_url_stops_a_service_in_one_line(name: str, url: str) -> None:
    # It once started, and failed at its first use of the URL with a traceback (or, for
    # RabbitMQ, retried an http:// URL for ever).
    done = _cloudtask(
        ["api", "--port", "0"],
        clean_env(jwt_secret="x" * 32, **{name: url}),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"cloudtask: CLOUDTASK_{name.upper()}: ")
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"database": "ct_no_such_database"}, 'database "ct_no_such_database" does not exist'),
        ({"port": 1}, "Connect call failed"),
    ],
)
def test_migrate_on_a_database_it_cannot_use_says_why_in_one_line(
    service_env: dict[str, str], change: dict[str, Any], reason: str
) -> None:
    url = make_url(service_env["CLOUDTASK_DATABASE_URL"]).set(**change)
    env = {**service_env, "CLOUDTASK_DATABASE_URL": url.render_as_string(hide_password=False)}
    done = _cloudtask(["migrate"], env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cloudtask: cannot use the database: ")
    assert reason in lines[0]


@pytest.mark.parametrize(
    ("command", "registers", "says"),
    [
        ("worker", "echo", "job type 'echo' is built in; register yours under another name"),
        ("dev", "Resize Image", "job type 'Resize Image' must be 1-64 characters of a-z 0-9 _ . -"),
    ],
)
def test_a_handler_module_registering_a_type_it_cannot_have_is_refused_in_one_line(
    tmp_path: Path, command: str, registers: str, says: str
) -> None:
    # It stopped the worker with a traceback.
    (tmp_path / "myjobs.py").write_text(
        "from cloudtask import job_handler\n\n\n"
        f"@job_handler({registers!r})\n"
        "def handle(payload):\n"
        "    return payload\n"
    )
    done = _cloudtask(
        [command, "--port", "0", "--import", "myjobs"]
        + (["--db", str(tmp_path / "dev.db")] if command == "dev" else []),
        clean_env(jwt_secret="x" * 32),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"cloudtask: --import myjobs: {says}"]


def test_a_misspelled_setting_is_reported_in_one_line_and_the_service_starts(
    procs: Processes,
) -> None:
    procs.env["CLOUDTASK_WORKER_CONCURENCY"] = "4"
    procs.env["CLOUDTASK_BASE_URL"] = "http://127.0.0.1:8080"  # another program's variable
    worker = procs.start("worker")  # waits until its health endpoint answers
    warnings = [line for line in worker.log().splitlines() if "warning" in line]
    assert warnings == [
        "cloudtask: warning: ignoring CLOUDTASK_WORKER_CONCURENCY, which is not a setting"
        " (did you mean CLOUDTASK_WORKER_CONCURRENCY?)",
        "cloudtask: warning: ignoring CLOUDTASK_BASE_URL, which is not a setting"
        " (did you mean CLOUDTASK_DATABASE_URL?)",
    ]


def test_each_service_is_healthy_by_the_dependencies_it_uses(procs: Processes) -> None:
    # Redis unreachable: the results-processor never uses it, the worker does.
    env = {"CLOUDTASK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    results = procs.start("results", env=env)
    worker = procs.start("worker", env=env, up_even_if_degraded=True)
    answered = httpx.get(results.url + "/health", timeout=10)
    assert (answered.status_code, answered.json()) == (
        200,
        {"status": "UP", "components": {"db": {"status": "UP"}, "broker": {"status": "UP"}}},
    )
    answered = httpx.get(worker.url + "/health", timeout=10)
    assert (answered.status_code, answered.json()) == (
        503,
        {"status": "DOWN", "components": {"broker": {"status": "UP"}, "redis": {"status": "DOWN"}}},
    )


def _on_a_taken_port(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[str, "subprocess.CompletedProcess[str]"]:
    """Run ``cloudtask *args`` on a port another socket listens on; the port and how it ended."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = _cloudtask(
            [*args, "--host", "127.0.0.1", "--port", port],
            env,
            cwd=cwd,
        )
    return port, done


def test_cloudtask_dev_given_a_directory_for_its_database_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    done = _cloudtask(
        ["dev", "--port", "0", "--db", str(tmp_path)],
        clean_env(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"cloudtask: --db {tmp_path} is a directory: give the database file's path, such as "
        f"{tmp_path / 'cloudtask-dev.db'}"
    ]


def test_cloudtask_dev_given_a_path_under_a_file_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file\n")
    database = tmp_path / "notes.txt" / "dev.db"
    done = _cloudtask(["dev", "--port", "0", "--db", str(database)], clean_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"cloudtask: --db {database}: cannot make its directory {database.parent}: File exists"
    ]


def test_cloudtask_dev_given_a_file_that_is_not_a_database_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    database = tmp_path / "notes.txt"
    database.write_text("not a database\n")
    done = _cloudtask(
        ["dev", "--port", "0", "--db", str(database)],
        clean_env(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"cloudtask: --db {database}: file is not a database (give the path of a new file, or "
        "of a dev database)"
    ]
    assert database.read_text() == "not a database\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]  # no secret beside


def test_cloudtask_dev_on_port_0_says_which_port_it_listens_on(tmp_path: Path) -> None:
    # The servers' URLs it does not read, however they are spelled, do not stop it.
    unread = {"database_url": "mysql://u:p@db/x", "redis_url": "redis+sentinel://s/0"}
    with subprocess.Popen(
        [CLOUDTASK, "dev", "--port", "0", "--db", str(tmp_path / "dev.db")],
        env=clean_env(**unread),
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = next(line for line in proc.stderr if "listening on" in line)
            url = line.split("listening on ")[1].split()[0]
            assert not url.endswith(":0")
            assert httpx.get(url + "/actuator/health", timeout=10).status_code == 200
        finally:
            proc.terminate()
            proc.communicate(timeout=60)


@pytest.mark.parametrize("command", ["api", "worker", "results", "scheduler"])
def test_a_service_whose_port_is_taken_exits_at_once_saying_so(
    command: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    # uvicorn exits the process when it cannot listen; a worker once kept running without its
    # /health, deaf to SIGTERM. Now every service stops what it started and exits 1.
    port, done = _on_a_taken_port([command], service_env, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"cloudtask: cannot serve HTTP on 127.0.0.1:{port} (see the error above)"
    assert "address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    if command in ("worker", "results", "scheduler"):  # it took no work before giving up
        assert f'"action": "{command}.started"' not in done.stderr
        assert f'"action":"{command}.started"' not in done.stderr


def test_cloudtask_dev_whose_port_is_taken_exits_before_opening_its_database(
    tmp_path: Path,
) -> None:
    # A second `cloudtask dev` beside a running one once queued the pending jobs of their shared
    # database again, ran them and took the scheduler's lead, and only then found the port taken.
    database = tmp_path / "dev.db"
    port, done = _on_a_taken_port(["dev", "--db", str(database)], clean_env(), tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"cloudtask: cannot serve HTTP on 127.0.0.1:{port}: Address already in use"
    ]
    assert list(tmp_path.iterdir()) == []  # no database, key-value file or secret written


def test_api_workers_whose_port_is_taken_exit_at_once_saying_so(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    # With --workers N the parent opens the socket the N processes share, before any fork.
    port, done = _on_a_taken_port(["api", "--workers", "2"], service_env, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"cloudtask: cannot serve HTTP on 127.0.0.1:{port}: Address already in use"
    ]


def test_cloudtask_dev_runs_jobs_of_every_outcome(tmp_path: Path) -> None:
    with processes(clean_env(bcrypt_rounds="4"), tmp_path) as group:
        dev = group.start("dev", "--db", str(tmp_path / "dev.db"))
        client = group.client(dev)
        echo = client.submit(type="echo", payload={"a": 1})
        sleep = client.submit(type="sleep", payload={"seconds": 0.5})
        unknown = client.submit(type="no.such.type")
        mail = client.submit(type="email", payload={"to": "a@example.com", "subject": "Hi"})
        assert client.wait(echo["id"], "COMPLETED")["result"] == {"a": 1}
        assert client.wait(sleep["id"], "COMPLETED")["result"] == "Slept for 0.5 seconds"
        failed = client.wait(unknown["id"], "FAILED")
        assert failed["attempts"] == 1
        assert failed["error"] == "unknown job type: no.such.type"
        saved = Path(client.wait(mail["id"], "COMPLETED")["result"]["savedTo"])
        assert saved.parent == tmp_path / "cloudtask-mail"
        assert "Subject: Hi" in saved.read_text()
        assert dev.stop() == 0


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_cloudtask_dev_runs_the_jobs_it_held_after_a_restart(tmp_path: Path, stop: str) -> None:
    # The in-process broker goes with the process: the jobs queued in it, the jobs the worker put
    # back or a kill cut off, and the reports of jobs that ended while it stopped, are in the
    # database alone.
    db = str(tmp_path / "dev.db")
    # A short lease: a job a killed process left RUNNING is found lost within seconds.
    env = clean_env(bcrypt_rounds="4", worker_grace_seconds="1.5", worker_lease_seconds="3")
    with processes(env, tmp_path) as group:
        dev = group.start("dev", "--db", db, "--concurrency", "2")
        client = group.client(dev)
        short = client.submit(type="sleep", payload={"seconds": 0.5})
        # Past the grace period: put back on the stop, and with one attempt only, it must not
        # be failed as hung after the restart either.
        long = client.submit(type="sleep", payload={"seconds": 3}, maxAttempts=1)
        client.wait(short["id"], "RUNNING")
        client.wait(long["id"], "RUNNING")
        queued = [client.submit(type="echo", payload=n) for n in range(3)]
        assert [client.get(job["id"])["status"] for job in queued] == ["PENDING"] * 3
        keyed = {"json": {"type": "echo", "payload": "once"}, "headers": {"Idempotency-Key": "k1"}}
        first = client.http.post("/jobs", **keyed)
        assert first.status_code == 201
        if stop == "SIGTERM":
            assert dev.stop() == 0  # the short job ends within the grace period, the long not
        else:
            time.sleep(2 * KV_SAVED_EVERY)  # the key-value store is saved while it runs
            dev.kill()

        again = group.start("dev", "--db", db, "--concurrency", "2")
        restarted = group.client(again)
        restarted.http.headers["Authorization"] = client.http.headers["Authorization"]
        if stop == "SIGTERM":
            # Reported before the stop, not run again after it.
            assert restarted.get(short["id"])["status"] == "COMPLETED"
        # The key-value store was kept, by the stop or while the process ran: the same key
        # still answers the first request (a kill once lost it, and the retry made a new job).
        replayed = restarted.http.post("/jobs", **keyed)
        assert replayed.headers.get("Idempotent-Replayed") == "true"
        assert (replayed.status_code, replayed.json()) == (201, first.json())
        for n, job in enumerate(queued):
            assert restarted.wait(job["id"], "COMPLETED", "FAILED")["result"] == n
        for job, seconds in ((short, 0.5), (long, 3)):
            done = restarted.wait(job["id"], "COMPLETED", "FAILED", timeout=30)
            assert (done["status"], done["result"]) == ("COMPLETED", f"Slept for {seconds} seconds")
        assert again.stop() == 0


def test_a_second_cloudtask_dev_on_the_same_database_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    # Both once ran: each queued the pending jobs again and ran them, and they took the
    # scheduler's lead in turn.
    db = tmp_path / "dev.db"
    with processes(clean_env(), tmp_path) as group:
        first = group.start("dev", "--db", str(db))
        done = _cloudtask(["dev", "--port", "0", "--db", str(db)], clean_env())
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == (
            f"cloudtask: --db {db} is in use by another cloudtask dev: stop it, or give "
            "another --db"
        )
        assert "Traceback" not in done.stderr
        assert httpx.get(f"{first.url}/actuator/health", timeout=10).status_code == 200
        assert first.stop() == 0


def test_cloudtask_dev_replaces_a_kept_secret_too_short_to_sign_with(tmp_path: Path) -> None:
    # An empty file (a process cut short as it wrote it) made every login a 500; a short one
    # let anyone who guessed it forge tokens.
    db = tmp_path / "dev.db"
    secret = tmp_path / "dev.db.secret"
    secret.write_text("")
    with processes(clean_env(bcrypt_rounds="4"), tmp_path) as group:
        dev = group.start("dev", "--db", str(db))
        client = group.client(dev)
        assert client.submit(type="echo", payload=1)["status"] in ("PENDING", "COMPLETED")
        assert len(secret.read_text().strip()) >= 32
        assert dev.stop() == 0


def _dev_database_at_revision(tmp_path: Path, revision: str) -> Path:
    """A database ``cloudtask dev`` made, its Alembic revision then set to ``revision``."""
    db = tmp_path / "dev.db"
    with processes(clean_env(), tmp_path) as group:
        assert group.start("dev", "--db", str(db)).stop() == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return db


def test_cloudtask_dev_starts_on_a_database_a_later_version_migrated(tmp_path: Path) -> None:
    db = _dev_database_at_revision(tmp_path, "9999")
    with processes(clean_env(bcrypt_rounds="4"), tmp_path) as group:
        dev = group.start("dev", "--db", str(db))
        assert group.client(dev).submit(type="echo", payload=2)["type"] == "echo"
        assert dev.stop() == 0
        assert "newer than this version's" in dev.log()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("9999",)


def test_cloudtask_dev_refuses_a_database_of_another_programs_migrations(tmp_path: Path) -> None:
    db = _dev_database_at_revision(tmp_path, "a1b2c3d4e5f6")
    done = _cloudtask(["dev", "--port", "0", "--db", str(db)], clean_env())
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"cloudtask: --db {db}: its schema is at revision 'a1b2c3d4e5f6', which is not "
        "CloudTask's (give the path of a new file, or of a dev database)"
    )


def test_the_api_can_serve_one_port_from_several_processes(procs: Processes) -> None:
    api = procs.start("api", "--workers", "2")
    client = procs.client(api)
    jobs = [client.submit(type="echo", payload=i) for i in range(20)]
    assert len({job["id"] for job in jobs}) == 20
    children = _children(api.proc.pid)
    assert len(children) == 2
    # Each scrape reaches one process, and shows what both counted.
    scrapes = [
        metric(api.url, "cloudtask_jobs_created_total", "/actuator/prometheus", type="echo")
        for _ in range(6)
    ]
    assert scrapes == [20.0] * 6
    assert metric(api.url, "cloudtask_service_up", "/actuator/prometheus") == 1.0
    (shared,) = {
        path.parent
        for path in Path(tempfile.gettempdir()).glob("cloudtask-metrics-*/counter_*.db")
        if path.name == f"counter_{children[0]}.db"
    }
    assert api.stop(timeout=30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not shared.exists()


def test_api_processes_whose_parent_was_killed_stop_by_themselves(procs: Processes) -> None:
    api = procs.start("api", "--workers", "2")
    children = _children(api.proc.pid)
    assert len(children) == 2
    api.kill()  # SIGKILL: the parent cannot pass it on
    deadline = time.monotonic() + 20
    while alive := [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]:
        assert time.monotonic() < deadline, f"still running: {alive}"
        time.sleep(0.2)
    assert "the parent process is gone; stopping" in api.log()
    # Its metrics directory outlived it; the next api of several processes removes it.
    (left,) = Path(tempfile.gettempdir()).glob(f"cloudtask-metrics-{api.proc.pid}-*")
    second = procs.start("api", "--workers", "2")
    assert not left.exists()
    assert second.stop(timeout=30) == 0  # and removes its own
    assert not list(Path(tempfile.gettempdir()).glob(f"cloudtask-metrics-{second.proc.pid}-*"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"ct_empty_{secrets.token_hex(6)}"
    infra.admin(f'CREATE DATABASE "{name}"')
    try:
        yield infra.pg_url(name)
    finally:
        infra.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# api --workers 2 checks in its parent process; the others (api alone, results) as scheduler.
@pytest.mark.parametrize("command", [["api", "--workers", "2"], ["scheduler"]])
def test_a_service_on_a_database_never_migrated_says_so_in_one_line(
    service_env: dict[str, str], empty_database: str, command: list[str]
) -> None:
    # It started, said it was healthy and failed every request needing a table.
    env = {**service_env, "CLOUDTASK_DATABASE_URL": empty_database}
    done = _cloudtask([*command, "--port", "0"], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cloudtask: CLOUDTASK_DATABASE_URL: the database has no CloudTask tables; "
        "run `cloudtask migrate` first"
    ]
