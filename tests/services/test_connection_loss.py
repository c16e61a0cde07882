"""RabbitMQ only: a job running when the services lose their connection still finishes."""

import asyncio
from urllib.parse import unquote, urlsplit

import pytest

from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.settings import Settings
from cloudtask.worker import pipeline, reporting
from tests import infra
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import metric, wait_for_metric


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    # A job put back while the broker refuses its report is delivered again and again; on a
    # busy machine, more than the default MAX_DELIVERIES times before the test lets it through.
    return settings.model_copy(update={"max_deliveries": 100})


async def _close_connections(stack: Stack) -> None:
    assert stack.backends.rabbitmq_url is not None
    vhost = unquote(urlsplit(stack.backends.rabbitmq_url).path.lstrip("/"))
    await asyncio.to_thread(
        infra.rabbitmqctl, "close_all_connections", "--vhost", vhost, "test: connection lost"
    )


def _needs_rabbitmq(stack: Stack) -> None:
    if stack.backends.rabbitmq_url is None:
        pytest.skip("the in-process broker has no connection to lose")


async def test_a_running_job_finishes_and_reports_across_a_lost_connection(stack: Stack) -> None:
    _needs_rabbitmq(stack)
    token = await stack.client.register()
    job = await stack.client.create_job(
        token, type="sleep", payload={"seconds": 2}, maxAttempts=1, timeoutSeconds=60
    )
    await wait_for_status(stack.client, token, job["id"], "RUNNING")
    await _close_connections(stack)
    # The client reconnects; the job ends as it would have, without waiting for the
    # hung-attempt recovery (its timeout plus 30 s) and without a second attempt.
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", timeout=20)
    assert done["status"] == "COMPLETED", done
    assert done["result"] == "Slept for 2 seconds"
    assert done["attempts"] == 1


async def test_a_job_not_yet_announced_runs_once_when_its_lost_delivery_comes_back(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_rabbitmq(stack)
    monkeypatch.setattr(pipeline, "ANNOUNCE_AFTER", 60)
    token = await stack.client.register()
    # Long enough to outlast rabbitmqctl, which takes a second or more on a busy machine: a job
    # that ended before its connection closed has nothing to be delivered again.
    job = await stack.client.create_job(
        token, type="sleep", payload={"seconds": 4}, maxAttempts=1, timeoutSeconds=60
    )

    async def running() -> bool:
        return stack.worker.busy == 1

    await eventually(running)
    await _close_connections(stack)
    # (Two once the redelivery came, as it may before rabbitmqctl returns: it waits here too.)
    assert stack.worker.busy >= 1, "the job ended before its connection was closed"
    # Its delivery was not acknowledged, so RabbitMQ hands it out again, redelivered. The worker
    # that lost it still runs it and said so in its lease: the redelivery waits for its report
    # and is dropped as a copy. It ran a second time before.
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", timeout=20)
    assert done["status"] == "COMPLETED", done
    assert done["attempts"] == 1
    worker = stack.worker.metrics.registry
    await wait_for_metric(worker, "cloudtask_worker_copies_skipped_total", 1)
    assert metric(worker, "cloudtask_worker_jobs_started_total", type="sleep") == 1
    assert await stack.backends.broker.get(JOBS_CREATED) is None


async def test_a_job_whose_report_the_broker_refuses_goes_back_to_the_queue_and_runs_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RabbitMQ takes deliveries and acknowledgements but refuses (nacks) every report: the
    # worker gives up publishing one. The job, too short to have been announced, is still
    # PENDING, and its delivery is all that holds it.
    _needs_rabbitmq(stack)
    monkeypatch.setattr(reporting, "PUBLISH_LIMIT", 0.5)
    assert stack.backends.rabbitmq_url is not None
    vhost = unquote(urlsplit(stack.backends.rabbitmq_url).path.lstrip("/"))
    policy = ["-p", vhost, "test-refuse-reports"]
    await asyncio.to_thread(
        infra.rabbitmqctl,
        "set_policy",
        *policy,
        r"^jobs\.completed$",
        '{"max-length": 0, "overflow": "reject-publish"}',
        "--apply-to",
        "queues",
    )
    try:
        token = await stack.client.register()
        job = await stack.client.create_job(token, type="echo", payload={"n": 1})
        worker = stack.worker.metrics.registry

        async def ran_twice() -> bool:
            return metric(worker, "cloudtask_worker_jobs_started_total", type="echo") >= 2

        await eventually(ran_twice, timeout=20)
        assert (await stack.client.get_job(token, job["id"]))["status"] == "PENDING"
    finally:
        await asyncio.to_thread(infra.rabbitmqctl, "clear_policy", *policy)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", timeout=20)
    outcome = (done["status"], done["result"], done["attempts"], done["error"])
    assert outcome == ("COMPLETED", {"n": 1}, 1, None)
