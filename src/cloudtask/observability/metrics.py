"""Prometheus metrics, one ``CollectorRegistry`` per service so that several services (``cloudtask
dev``, tests) can live in one process. Names follow Prometheus conventions with a ``cloudtask_``
prefix; labels are bounded (no job or user ids; job types through :class:`BoundedLabel`).
"""

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
            multiprocess_mode="max",  # several api processes are one service (shared_values)
        )
        self.up.labels(service).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def outbox_counter(self) -> "Counter":
        """For the services that publish outbox messages (the API and the scheduler)."""
        return Counter(
            "cloudtask_outbox_published_total",
            "Outbox messages published and confirmed by the broker, by the service that did.",
            ["service"],
            registry=self.registry,
        ).labels(self.service)


class _Merged(Collector):
    def __init__(self, services: Sequence[ServiceMetrics]) -> None:
        self._services = services

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for service in self._services:
            for family in service.registry.collect():
                if family.name not in merged:
                    merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged[family.name].samples.extend(family.samples)
        return merged.values()


def render_all(services: Sequence[ServiceMetrics]) -> bytes:
    """One valid exposition of several services' metrics (``cloudtask dev`` hosts all four):
    families of the same name are merged, their samples told apart by their labels."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(services))
    return generate_latest(registry)


class WorkerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("worker")
        self.jobs_started = Counter(
            "cloudtask_worker_jobs_started_total",
            "Attempts a worker started, by job type.",
            ["type"],
            registry=self.registry,
        )
        self.jobs_processed = Counter(
            "cloudtask_worker_jobs_processed_total",
            "Attempts a worker finished, by job type and outcome "
            "(completed, failed, timeout, cancelled, unknown_type).",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "cloudtask_worker_job_duration_seconds",
            "Time a handler ran, by job type.",
            ["type"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "cloudtask_worker_jobs_in_flight",
            "Attempts running now.",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "cloudtask_worker_dead_lettered_total",
            "Messages sent to jobs.dead, by reason (unparseable, redelivered).",
            ["reason"],
            registry=self.registry,
        )
        self.requeued = Counter(
            "cloudtask_worker_jobs_requeued_total",
            "Attempts put back on jobs.created because the worker stopped before they finished.",
            registry=self.registry,
        )
        self.given_back = Counter(
            "cloudtask_worker_deliveries_given_back_total",
            "Deliveries returned to jobs.created, by reason (waited: for a slot, past "
            "WAIT_LIMIT; handled_elsewhere: a type only other workers have a handler for; "
            "lost: with their channel, before they started, and handed out again).",
            ["reason"],
            registry=self.registry,
        )
        self.copies = Counter(
            "cloudtask_worker_copies_skipped_total",
            "First deliveries of an attempt whose lease another delivery held (a copy of the "
            "message, published twice), and redeliveries of an attempt its worker reported or "
            "announced after losing the delivery's connection: acknowledged without running.",
            registry=self.registry,
        )
        self.abandoned = Counter(
            "cloudtask_worker_abandoned_handlers_total",
            "Handlers that ignored cancellation after a timeout or cancel and kept running.",
            registry=self.registry,
        )


class ResultsMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("results")
        self.events = Counter(
            "cloudtask_results_events_total",
            "Worker events read, by kind (started, completed) and whether they changed a job "
            "(applied) or were stale or duplicate (ignored).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cloudtask_results_write_batch_size",
            "Events written per database transaction.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "cloudtask_jobs_finished_total",
            "Attempts recorded as ended, by job type and the status they left the job in "
            "(COMPLETED, FAILED, CANCELLED, or SCHEDULED for a retry).",
            ["type", "status"],
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "cloudtask_job_end_to_end_seconds",
            "Time from a job's creation to its final status, by job type.",
            ["type"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "cloudtask_results_dead_lettered_total",
            "Events that could not be parsed or written, sent to jobs.dead.",
            registry=self.registry,
        )


class SchedulerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("scheduler")
        self.leader = Gauge(
            "cloudtask_scheduler_leader",
            "1 while this scheduler leads (or acts because the key-value store is unreachable).",
            registry=self.registry,
        )
        self.dispatched = Counter(
            "cloudtask_jobs_dispatched_total",
            "Due jobs handed to the workers (delayed jobs and retries), by job type.",
            ["type"],
            registry=self.registry,
        )
        self.dispatch_lag = Histogram(
            "cloudtask_scheduler_dispatch_lag_seconds",
            "How late a due job was dispatched (now - runAt).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.schedules_fired = Counter(
            "cloudtask_schedules_fired_total",
            "Recurring schedule firings that created a job.",
            registry=self.registry,
        )
        self.recovered = Counter(
            "cloudtask_scheduler_recovered_total",
            "RUNNING attempts recovered, by reason (lost: worker gone, requeued; hung: past "
            "timeout, failed; cancelled; gave_up: lost too often, failed).",
            ["reason"],
            registry=self.registry,
        )
        self.outbox_published = self.outbox_counter()


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
        self.outbox_published = self.outbox_counter()
        self.logins = Counter(
            "cloudtask_logins_total",
            "Login attempts, by outcome (ok, invalid, throttled).",
            ["outcome"],
            registry=self.registry,
        )
