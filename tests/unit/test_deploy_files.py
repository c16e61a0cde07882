"""The deployment files: compose, Prometheus, Grafana, the image and Kubernetes agree with the code.

Metric names are collected from the services' own registries, so a dashboard, an alert or the
architecture doc that names a metric nobody exports fails here, not on an operator's screen.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from cloudtask.observability.metrics import (
    ApiMetrics,
    ResultsMetrics,
    SchedulerMetrics,
    ServiceMetrics,
    WorkerMetrics,
)
from cloudtask.observability.sampler import StateSampler
from cloudtask.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARDS = sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))
APP_SERVICES = {"api": 8080, "worker": 9091, "results": 9092, "scheduler": 9093}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "and", "or", "unless", "inf", "nan"}  # fmt: skip


def service_metrics() -> dict[str, ServiceMetrics]:
    scheduler = SchedulerMetrics()
    StateSampler(scheduler, db=None, broker=None)  # type: ignore[arg-type] # registers its gauges
    return {"api": ApiMetrics(), "worker": WorkerMetrics(), "results": ResultsMetrics(),
            "scheduler": scheduler}  # fmt: skip


def exported_series() -> set[str]:
    """Every series name the services can export (``_total``, ``_bucket``, … forms included)."""
    return {
        family.name + suffix
        for metrics in service_metrics().values()
        for family in metrics.registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def families(metrics: ServiceMetrics) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each family as documented: name (counters with ``_total``) → (type, label names)."""
    found = {}
    for metric in metrics.registry._collector_to_names:
        assert isinstance(metric, MetricWrapperBase)
        name = metric._name + ("_total" if metric._type == "counter" else "")
        found[name] = (metric._type, tuple(metric._labelnames))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or numbers)."""
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)  # Grafana's variables, such as $__rate_interval
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {
        match.group()
        for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr)
        if match.group().lower() not in PROMQL_WORDS
        and not expr[match.end() :].lstrip().startswith("(")
    }


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> Any:
    return load(COMPOSE / "docker-compose.yml")["services"]


def dashboard_targets(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(datasource uid, target) of every query on every panel, rows included."""
    panels = json.loads(path.read_text())["panels"]
    for panel in [*panels, *(p for row in panels for p in row.get("panels", []))]:
        for target in panel.get("targets", []):
            yield (target.get("datasource") or panel["datasource"])["uid"], target


def test_the_promql_reader_sees_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, type) (rate(a_bucket{x="y"}[$__rate_interval])))'
        " / on (type) group_left b_total offset 5m or vector(0) > bool 1e3 + c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_compose_runs_the_infrastructure_and_the_four_services_from_the_dockerfile() -> None:
    services = compose()
    infra = {"postgres", "redis", "rabbitmq", "prometheus", "grafana", "loki", "promtail"}
    assert infra | {"migrate", *APP_SERVICES} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    for name in ["migrate", *APP_SERVICES]:
        build = services[name]["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert services["migrate"]["command"] == ["migrate"]
    for name, port in APP_SERVICES.items():
        assert services[name]["command"] == [name, "--port", str(port)]
        assert "cloudtask-healthcheck" in " ".join(services[name]["healthcheck"]["test"])
    for name in ("api", "results", "scheduler"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_compose_refuses_to_start_without_a_jwt_secret_and_ships_none() -> None:
    secret = compose()["api"]["environment"]["CLOUDTASK_JWT_SECRET"]
    assert re.fullmatch(r"\$\{CLOUDTASK_JWT_SECRET:\?.+\}", secret)
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert len(example["CLOUDTASK_JWT_SECRET"].encode()) < 32  # a placeholder services refuse
    # Docker's own check, where the compose plugin is installed (it is not on every host).
    if shutil.which("docker") and _compose(["version"], dict(os.environ)).returncode == 0:
        env = {k: v for k, v in os.environ.items() if k != "CLOUDTASK_JWT_SECRET"}
        config = ["--env-file", "/dev/null", "config", "--quiet"]
        refused = _compose(config, env)
        assert refused.returncode != 0 and "CLOUDTASK_JWT_SECRET" in refused.stderr
        done = _compose(config, {**env, "CLOUDTASK_JWT_SECRET": "x" * 64})
        assert done.returncode == 0, done.stderr


def _compose(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ["docker", "compose", *args]
    return subprocess.run(
        command, cwd=COMPOSE, env=env, capture_output=True, text=True, check=False
    )


def _k8s_documents() -> list[dict[str, Any]]:
    paths = sorted(K8S.glob("*.yaml"))
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_cloudtask_setting_the_deployment_sets_is_one_the_services_accept() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    names = set(compose()["api"]["environment"])
    names |= {line.split("=")[0] for line in (COMPOSE / ".env.example").read_text().splitlines()}
    for doc in _k8s_documents():
        names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    settings = {name for name in names if name.startswith(ENV_PREFIX)}
    assert settings, "no settings found"
    assert settings <= known, f"the services would refuse {settings - known}"


def test_prometheus_scrapes_each_service_on_its_compose_name_port_and_path() -> None:
    config = load(COMPOSE / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, port in APP_SERVICES.items():
        [sd] = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([name], "A", port)
        path = "/actuator/prometheus" if name == "api" else "/metrics"
        assert jobs[name]["metrics_path"] == path
    assert all((COMPOSE / rules).is_file() for rules in config["rule_files"])


def test_alert_rules_read_only_metrics_the_services_export() -> None:
    rules = [rule for group in load(COMPOSE / "alerts.yml")["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert metric_names(rule["expr"]) <= exported_series() | {"up"}, rule["alert"]


def test_grafana_provisions_prometheus_and_loki_and_the_dashboards_folder() -> None:
    provisioning = COMPOSE / "grafana" / "provisioning"
    sources = load(provisioning / "datasources" / "datasources.yml")["datasources"]
    assert {(s["uid"], s["type"], s["url"]) for s in sources} == {
        ("prometheus", "prometheus", "http://prometheus:9090"),
        ("loki", "loki", "http://loki:3100"),
    }
    [provider] = load(provisioning / "dashboards" / "dashboards.yml")["providers"]
    mounts = compose()["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_there_is_a_dashboard_for_the_pipeline_the_api_and_each_service() -> None:
    assert {path.stem for path in DASHBOARDS} == {
        "job-pipeline", "api", "worker", "results", "scheduler"}  # fmt: skip
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.stem for path in DASHBOARDS])
def test_every_dashboard_query_reads_only_metrics_the_services_export(path: Path) -> None:
    exported = exported_series()
    queries = list(dashboard_targets(path))
    assert any(uid == "prometheus" for uid, _ in queries)
    for uid, target in queries:
        assert uid in {"prometheus", "loki"}, f"unknown data source {uid}"
        if uid == "loki":
            assert target["expr"].startswith("{service"), target["expr"]
            continue
        names = metric_names(target["expr"])
        assert names, f"no metric in {target['expr']}"
        assert names <= exported, f"{path.name}: {target['expr']} reads {names - exported}"


@pytest.mark.parametrize("service", list(APP_SERVICES))
def test_each_service_dashboard_shows_every_metric_its_service_exports(service: str) -> None:
    path = COMPOSE / "grafana" / "dashboards" / f"{service}.json"
    shown = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for uid, target in dashboard_targets(path)
        if uid == "prometheus"
        for name in metric_names(target["expr"])
    }
    exported = set(families(service_metrics()[service]))
    assert exported <= shown, f"not on the {service} dashboard: {exported - shown}"


def test_the_architecture_doc_lists_every_metric_with_its_type_and_labels() -> None:
    rows = re.findall(
        r"^\| `(cloudtask_\w+)` \| (\w+) \| ([^|]*) \|",
        (ROOT / "docs" / "architecture.md").read_text(),
        re.M,
    )
    documented = {
        name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }
    exported = {
        k: v for metrics in service_metrics().values() for k, v in families(metrics).items()
    }
    assert documented == exported


def test_the_image_is_multi_stage_unprivileged_and_checks_its_own_health() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(stages) >= 2 and stages[-1].startswith("python:3.11-slim")
    [user] = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user.split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["cloudtask"\]$', dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD \[\"python\"", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item
            assert f"!{item}" in ignored or f"!{item}/" in ignored, f"{item} is not in the context"


def test_the_image_healthcheck_asks_each_service_on_its_own_port_and_path() -> None:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", ROOT / "deploy/docker/healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    python = ["/usr/local/bin/python", "/usr/local/bin/cloudtask"]
    assert module.health_url([*python, "api"]) == "http://127.0.0.1:8080/actuator/health"
    assert (
        module.health_url([*python, "worker", "--port", "9191"]) == "http://127.0.0.1:9191/health"
    )
    assert module.health_url([*python, "scheduler", "--port=9393"]).endswith(":9393/health")
    assert module.health_url([*python, "migrate"]) is None


def test_kubernetes_runs_each_service_with_probes_resources_and_the_shared_settings() -> None:
    docs = _k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"cloudtask-{name}" for name in APP_SERVICES}
    for name, port in APP_SERVICES.items():
        pod = deployments[f"cloudtask-{name}"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["args"] == [name, "--port", str(port)]
        assert container["ports"][0]["containerPort"] == port
        assert {"readinessProbe", "livenessProbe", "resources"} <= set(container)
        assert container["resources"]["requests"] and container["resources"]["limits"]
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"cloudtask-config", "cloudtask-secrets"}
    [job] = [d for d in docs if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert len(secret["stringData"]["CLOUDTASK_JWT_SECRET"]) < 32  # a placeholder
    [scaler] = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaler["spec"]["scaleTargetRef"]["name"] == "cloudtask-worker"
    [trigger] = scaler["spec"]["triggers"]
    assert (trigger["type"], trigger["metadata"]["queueName"]) == ("rabbitmq", "jobs.created")
    assert "Worker autoscaling" in (K8S / "README.md").read_text()
