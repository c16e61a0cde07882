"""Prometheus metrics, one ``CollectorRegistry`` per service so that several services (``cloudtask
dev``, tests) can live in one process. Names follow Prometheus conventions with a ``cloudtask_``
prefix; labels are bounded (no job or user ids; job types through :class:`BoundedLabel`).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cloudtask.observability.labels import BoundedLabel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_DURATION_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class ServiceMetrics:
    """The registry of one service, and what every service exports."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_type = BoundedLabel()
        self.up = Gauge(
            "cloudtask_service_up",
            "1 while the service runs.",
            ["service"],
            registry=self.registry,
        )
        self.up.labels(service).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ApiMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("api")
        self.http_requests = Counter(
            "cloudtask_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "cloudtask_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_created = Counter(
            "cloudtask_jobs_created_total",
            "Jobs accepted by the API, by type.",
            ["type"],
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "cloudtask_outbox_published_total",
            "Outbox messages published and confirmed by the broker.",
            registry=self.registry,
        )
        self.logins = Counter(
            "cloudtask_logins_total",
            "Login attempts, by outcome (ok, invalid, throttled).",
            ["outcome"],
            registry=self.registry,
        )
