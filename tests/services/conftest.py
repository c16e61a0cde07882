"""The services running in-process on each back end, behind an API client.

``stack`` starts the API app, a results-processor, a scheduler and a worker (with the built-in
handlers plus ``stack_handlers``) on the parametrized back ends; tests drive it over the API.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from cloudtask.api.app import create_app
from cloudtask.results.service import ResultsService
from cloudtask.scheduler.service import SchedulerService
from cloudtask.settings import Settings
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.service import WorkerService
from tests.conftest import Backends
from tests.helpers import Client, fail_on_5xx
from tests.openapi_check import conformance_hook


@dataclass
class Stack:
    client: Client
    backends: Backends
    settings: Settings
    worker: WorkerService
    results: ResultsService
    scheduler: SchedulerService
    extra: list[object] = field(default_factory=list)


@pytest.fixture
def stack_handlers() -> HandlerRegistry:
    """Handlers the stack's worker knows besides the built-in ones; tests register their own."""
    return HandlerRegistry()


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    """Settings of the stack; override this fixture to change them."""
    return settings


@pytest.fixture
async def stack(
    backends: Backends,
    stack_settings: Settings,
    stack_handlers: HandlerRegistry,
    tmp_path: object,
) -> AsyncIterator[Stack]:
    settings = stack_settings
    handlers = builtin_handlers(settings).merged(stack_handlers)
    worker = WorkerService(
        settings, broker=backends.broker, kv=backends.kv, handlers=handlers, worker_id="test-worker"
    )
    results = ResultsService(settings, db=backends.db, broker=backends.broker)
    scheduler = SchedulerService(
        settings, db=backends.db, broker=backends.broker, kv=backends.kv, holder="test-scheduler"
    )
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with app.router.lifespan_context(app):
        await results.start()
        await worker.start()
        await scheduler.start()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://cloudtask.test",
                event_hooks={"response": [fail_on_5xx, conformance_hook(app.openapi())]},
            ) as http:
                yield Stack(Client(http, backends), backends, settings, worker, results, scheduler)
        finally:
            await scheduler.stop()
            await worker.stop(grace=1)
            await results.stop()
