"""The whole pipeline in one process, on each back end: submit over the API, see it finish."""

from tests.helpers import wait_for_status
from tests.services.conftest import Stack


async def test_an_echo_job_completes_with_its_payload_as_result(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload={"hello": [1, 2]})
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    assert done["result"] == {"hello": [1, 2]}
    assert done["attempts"] == 1
    assert done["startedAt"] is not None and done["finishedAt"] is not None
