"""Metrics from real processes: every family each service exports, with counts that match the jobs
run, and a real Prometheus server scraping them with the shipped scrape config and alert rules."""

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import ApiClient
from tests.e2e.processes import Process, Processes, free_port

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose"
SERVICES = ("api", "worker", "results", "scheduler")
FAMILIES = {
    "api": "http_requests_total http_request_duration_seconds jobs_created_total "
    "outbox_published_total logins_total service_up",
    "worker": "worker_jobs_started_total worker_jobs_processed_total worker_job_duration_seconds "
    "worker_jobs_in_flight worker_dead_lettered_total worker_jobs_requeued_total "
    "worker_abandoned_handlers_total service_up",
    "results": "results_events_total results_write_batch_size jobs_finished_total "
    "job_end_to_end_seconds results_dead_lettered_total service_up",
    "scheduler": "scheduler_leader jobs_dispatched_total scheduler_dispatch_lag_seconds "
    "schedules_fired_total scheduler_recovered_total outbox_published_total queue_messages "
    "queue_consumers outbox_backlog outbox_oldest_age_seconds service_up",
}


class AtLeast(float):
    """An expected value that any larger one also meets."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int | float) and other >= float(self)

    __hash__ = float.__hash__


class Page:
    """One scrape of a metrics endpoint."""

    def __init__(self, process: Process) -> None:
        path = "/actuator/prometheus" if process.args[0] == "api" else "/metrics"
        text = httpx.get(process.url + path, timeout=5).text
        self.types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()
        )


def _eventually(check: Callable[[], None], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
        else:
            return


def _stack(procs: Processes) -> dict[str, Process]:
    """The four services, started side by side."""
    return dict(zip(SERVICES, procs.start_side_by_side(*SERVICES), strict=True))


def _run_every_outcome(client: ApiClient) -> None:
    """Two echo jobs, an unknown type, a timeout retried then failed, a delayed echo, and a
    running sleep cancelled."""
    echoes = [client.submit(type="echo", payload=n) for n in range(2)]
    unknown = client.submit(type="no.such.type")
    retried = client.submit(type="sleep", payload={"seconds": 5}, timeoutSeconds=1, maxAttempts=2)
    delayed = client.submit(type="echo", payload="later", delaySeconds=1)
    blocked = client.submit(type="sleep", payload={"seconds": 60})
    client.wait(blocked["id"], "RUNNING")
    assert client.http.post(f"/jobs/{blocked['id']}/cancel").status_code == 200
    for job in [*echoes, delayed]:
        assert client.wait(job["id"], "COMPLETED")["attempts"] == 1
    assert client.wait(unknown["id"], "FAILED")["attempts"] == 1
    assert client.wait(retried["id"], "FAILED")["attempts"] == 2
    assert client.wait(blocked["id"], "CANCELLED")["finishedAt"] is not None


def _log_in_twice(client: ApiClient) -> None:
    account = {"email": "metrics@example.com", "password": "password1"}
    assert client.http.post("/auth/register", json=account).status_code == 201
    assert client.http.post("/auth/login", json=account).status_code == 200
    wrong = {**account, "password": "password2"}
    assert client.http.post("/auth/login", json=wrong).status_code == 401


EXPECTED: dict[str, list[tuple[str, dict[str, str], float]]] = {
    "api": [
        ("cloudtask_jobs_created_total", {"type": "echo"}, 3),
        ("cloudtask_jobs_created_total", {"type": "sleep"}, 2),
        ("cloudtask_jobs_created_total", {"type": "no.such.type"}, 1),
        ("cloudtask_http_requests_total", {"method": "POST", "route": "/jobs", "status": "201"}, 6),
        ("cloudtask_http_requests_total", {"route": "/auth/register", "status": "201"}, 2),
        ("cloudtask_http_requests_total", {"route": "/jobs/{job_id}/cancel", "status": "200"}, 1),
        ("cloudtask_http_request_duration_seconds_count", {"method": "POST", "route": "/jobs"}, 6),
        ("cloudtask_http_request_duration_seconds_count", {"route": "/jobs/{job_id}"}, AtLeast(6)),
        ("cloudtask_logins_total", {"outcome": "ok"}, 1),
        ("cloudtask_logins_total", {"outcome": "invalid"}, 1),
        ("cloudtask_service_up", {"service": "api"}, 1),
    ],
    "worker": [
        ("cloudtask_worker_jobs_started_total", {"type": "echo"}, 3),
        ("cloudtask_worker_jobs_started_total", {"type": "sleep"}, 3),
        ("cloudtask_worker_jobs_processed_total", {"type": "echo", "outcome": "completed"}, 3),
        ("cloudtask_worker_jobs_processed_total", {"outcome": "unknown_type"}, 1),
        ("cloudtask_worker_jobs_processed_total", {"type": "sleep", "outcome": "timeout"}, 2),
        ("cloudtask_worker_jobs_processed_total", {"type": "sleep", "outcome": "cancelled"}, 1),
        ("cloudtask_worker_job_duration_seconds_count", {"type": "echo"}, 3),
        ("cloudtask_worker_job_duration_seconds_count", {"type": "sleep"}, 3),
        ("cloudtask_worker_job_duration_seconds_sum", {"type": "sleep"}, AtLeast(2.0)),
        ("cloudtask_worker_jobs_in_flight", {}, 0),
        ("cloudtask_worker_dead_lettered_total", {}, 0),
        ("cloudtask_worker_jobs_requeued_total", {}, 0),
        ("cloudtask_service_up", {"service": "worker"}, 1),
    ],
    "results": [
        # Only the sleeps (two timed-out attempts and the cancelled one) ran long enough to be
        # announced; the echoes and the unknown type were reported by their completion alone.
        ("cloudtask_results_events_total", {"kind": "started"}, 3),
        ("cloudtask_results_events_total", {"kind": "completed", "outcome": "applied"}, 7),
        ("cloudtask_results_events_total", {"kind": "completed", "outcome": "ignored"}, 0),
        ("cloudtask_results_write_batch_size_sum", {}, 10),
        ("cloudtask_jobs_finished_total", {"type": "echo", "status": "COMPLETED"}, 3),
        ("cloudtask_jobs_finished_total", {"type": "no.such.type", "status": "FAILED"}, 1),
        ("cloudtask_jobs_finished_total", {"type": "sleep", "status": "SCHEDULED"}, 1),
        ("cloudtask_jobs_finished_total", {"type": "sleep", "status": "FAILED"}, 1),
        ("cloudtask_jobs_finished_total", {"type": "sleep", "status": "CANCELLED"}, 1),
        ("cloudtask_job_end_to_end_seconds_count", {}, 6),
        ("cloudtask_job_end_to_end_seconds_sum", {"type": "sleep"}, AtLeast(2.0)),
        ("cloudtask_results_dead_lettered_total", {}, 0),
        ("cloudtask_service_up", {"service": "results"}, 1),
    ],
    "scheduler": [
        ("cloudtask_scheduler_leader", {}, 1),
        ("cloudtask_jobs_dispatched_total", {"type": "echo"}, 1),
        ("cloudtask_jobs_dispatched_total", {"type": "sleep"}, 1),
        ("cloudtask_scheduler_dispatch_lag_seconds_count", {}, 2),
        ("cloudtask_schedules_fired_total", {}, 0),
        ("cloudtask_scheduler_recovered_total", {}, 0),
        ("cloudtask_queue_messages", {"queue": "jobs.created"}, 0),
        ("cloudtask_queue_consumers", {"queue": "jobs.created"}, 1),
        ("cloudtask_queue_consumers", {"queue": "jobs.started"}, 1),
        ("cloudtask_queue_consumers", {"queue": "jobs.completed"}, 1),
        ("cloudtask_outbox_backlog", {}, 0),
        ("cloudtask_outbox_oldest_age_seconds", {}, 0),
        ("cloudtask_service_up", {"service": "scheduler"}, 1),
    ],
}


def test_every_service_exports_its_metric_families_with_counts_that_match_the_jobs_run(
    procs: Processes,
) -> None:
    stack = _stack(procs)
    client = procs.client(stack["api"])
    _log_in_twice(client)
    _run_every_outcome(client)

    def counts_match() -> None:
        pages = {name: Page(process) for name, process in stack.items()}
        for name, page in pages.items():
            for family in FAMILIES[name].split():
                assert f"cloudtask_{family}" in page.types, f"{name} lacks cloudtask_{family}"
            for metric, labels, expected in EXPECTED[name]:
                assert expected == page.value(metric, **labels), (name, metric, labels)
            for sample in page.samples:
                if sample.name.endswith("_bucket") and sample.labels["le"] == "+Inf":
                    count = sample.name.removesuffix("_bucket") + "_count"
                    others = {k: v for k, v in sample.labels.items() if k != "le"}
                    assert page.value(count, **others) == sample.value, sample
        errors = [s for s in pages["api"].samples if s.labels.get("status", "").startswith("5")]
        assert not errors, errors
        published = pages["api"].value("cloudtask_outbox_published_total")
        published += pages["scheduler"].value("cloudtask_outbox_published_total")
        assert published == 5 + 2  # the due jobs, then the delayed one and the retry

    _eventually(counts_match)


@contextmanager
def _prometheus(tmp_path: Path, targets: Mapping[str, int]) -> Iterator[str]:
    """Prometheus on loopback, with the shipped config pointed at ``targets`` (job → port)."""
    port = free_port()
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(COMPOSE / rules) for rules in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets.get(job['job_name'], port)}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(COMPOSE / "prometheus.yml")],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    with (tmp_path / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> None:
                assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    assert httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
                except httpx.HTTPError as exc:
                    raise AssertionError(exc) from None

            _eventually(ready)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


def _query(url: str, expr: str) -> dict[str, float]:
    """The instant vector of ``expr``, keyed by its labels as JSON."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}


def _dashboard_queries() -> list[str]:
    queries = []
    for path in sorted((COMPOSE / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            if panel.get("datasource", {}).get("type") == "prometheus":
                queries += [re.sub(r"\$__\w+", "1m", t["expr"]) for t in panel["targets"]]
    return queries


def test_a_real_prometheus_with_the_shipped_config_scrapes_the_job_counters(
    procs: Processes, tmp_path: Path
) -> None:
    stack = _stack(procs)
    client = procs.client(stack["api"])
    jobs = [client.submit(type="echo", payload=n) for n in range(2)]
    jobs.append(client.submit(type="no.such.type"))
    for job in jobs:
        client.wait(job["id"], "COMPLETED", "FAILED")
    ports = {name: process.port or 0 for name, process in stack.items()}
    with _prometheus(tmp_path, ports) as url:

        def scraped() -> None:
            assert _query(url, "sum by (job) (up)") == {
                json.dumps({"job": job}): 1.0 for job in [*SERVICES, "prometheus"]
            }
            assert _query(url, "sum(cloudtask_jobs_created_total)") == {"{}": 3.0}
            assert _query(url, "sum by (outcome) (cloudtask_worker_jobs_processed_total)") == {
                '{"outcome": "completed"}': 2.0,
                '{"outcome": "unknown_type"}': 1.0,
            }
            assert _query(url, "sum by (status) (cloudtask_jobs_finished_total)") == {
                '{"status": "COMPLETED"}': 2.0,
                '{"status": "FAILED"}': 1.0,
            }
            assert _query(url, "sum(cloudtask_outbox_published_total)") == {"{}": 3.0}
            assert _query(url, "sum(cloudtask_scheduler_leader)") == {"{}": 1.0}

        _eventually(scraped, timeout=45)
        for expr in _dashboard_queries():
            _query(url, expr)  # every panel's query is valid PromQL for this Prometheus

        def rules_evaluated() -> None:
            body = httpx.get(f"{url}/api/v1/rules", timeout=5).json()
            rules = [r for group in body["data"]["groups"] for r in group["rules"]]
            assert rules and all(rule["health"] == "ok" for rule in rules), rules

        _eventually(rules_evaluated)
