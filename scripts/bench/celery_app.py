"""The Celery 5 app CloudTask is compared against: RabbitMQ as broker (its own vhost), the
PostgreSQL database result backend (its own database), and one task that does what ``echo``
does. ``scripts/bench/run.py`` sets the URLs in the environment and starts
``celery -A scripts.bench.celery_app worker``.
"""

import os
from typing import Any

from celery import Celery

app = Celery(
    "ctbench",
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get(
        "BENCH_CELERY_BACKEND", "db+postgresql+psycopg2://postgres@127.0.0.1:5432/celery"
    ),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


# Celery ships no annotations for its decorators.
@app.task(name="bench.echo")  # type: ignore[untyped-decorator]
def echo(payload: Any = None) -> Any:
    """The counterpart of CloudTask's ``echo`` job: the result is the payload."""
    return payload
