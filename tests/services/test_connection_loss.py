"""RabbitMQ only: a job running when the services lose their connection still finishes, once."""

import asyncio
from urllib.parse import unquote, urlsplit

import pytest

from tests import infra
from tests.helpers import wait_for_status
from tests.services.conftest import Stack


async def test_a_running_job_finishes_and_reports_across_a_lost_connection(stack: Stack) -> None:
    if stack.backends.rabbitmq_url is None:
        pytest.skip("the in-process broker has no connection to lose")
    token = await stack.client.register()
    job = await stack.client.create_job(
        token, type="sleep", payload={"seconds": 2}, maxAttempts=1, timeoutSeconds=60
    )
    await wait_for_status(stack.client, token, job["id"], "RUNNING")
    vhost = unquote(urlsplit(stack.backends.rabbitmq_url).path.lstrip("/"))
    await asyncio.to_thread(
        infra.rabbitmqctl, "close_all_connections", "--vhost", vhost, "test: connection lost"
    )
    # The client reconnects; the job ends as it would have, without waiting for the
    # hung-attempt recovery (its timeout plus 30 s) and without a second attempt.
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", timeout=20)
    assert done["status"] == "COMPLETED", done
    assert done["result"] == "Slept for 2 seconds"
    assert done["attempts"] == 1
