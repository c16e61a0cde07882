"""A job whose type this worker has no handler for, but another running worker has, is given
back to the queue for that one, not failed: workers say in the key-value store which types they
handle. A type no running worker knows still fails at once (test_pipeline)."""

from typing import Any

from cloudtask.contracts.signals import handler_key
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually
from tests.services.conftest import Stack
from tests.services.support import finished_by_a_second_worker, metric


def _tripled(payload: Any) -> Any:
    return payload * 3


async def test_a_type_only_another_worker_handles_waits_for_it(stack: Stack) -> None:
    registry = stack.worker.metrics.registry
    # The stack's worker advertises its own types, and not this one.
    assert await stack.backends.kv.get(handler_key("echo")) == b"test-worker"
    assert await stack.backends.kv.get(handler_key("elsewhere.triple")) is None

    # Another worker has it, and is busy starting: its advertisement comes first.
    await stack.backends.kv.set(handler_key("elsewhere.triple"), b"other-worker", ttl=30)
    owner = await stack.client.register()
    job = await stack.client.create_job(owner, type="elsewhere.triple", payload=7)

    async def given_back_twice() -> bool:
        name = "cloudtask_worker_deliveries_given_back_total"
        return metric(registry, name, reason="handled_elsewhere") >= 2

    await eventually(given_back_twice)
    assert (await stack.client.get_job(owner, job["id"]))["status"] == "PENDING"

    handlers = HandlerRegistry()
    handlers.register("elsewhere.triple", _tripled)
    done = await finished_by_a_second_worker(stack, handlers, owner, job["id"])
    assert (done["status"], done["result"], done["attempts"]) == ("COMPLETED", 21, 1)
