"""An API client on each back end. Any 5xx answer fails the test that got it (a 503 from the
health endpoint, which reports a dependency down, is the one exception), and so does any answer
its operation's OpenAPI document does not allow (``tests/openapi_check.py``)."""

from collections.abc import AsyncIterator

import httpx
import pytest

from cloudtask.api.app import create_app
from cloudtask.settings import Settings
from tests.conftest import Backends
from tests.helpers import Client, fail_on_5xx
from tests.openapi_check import conformance_hook


@pytest.fixture
async def client(backends: Backends, settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://cloudtask.test",
            event_hooks={"response": [fail_on_5xx, conformance_hook(app.openapi())]},
        ) as http:
            yield Client(http, backends)
