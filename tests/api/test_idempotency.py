"""The Idempotency-Key header of POST /jobs."""

from uuid import UUID

import jwt

from cloudtask.api.idempotency import IdempotencyStore, fingerprint
from tests.conftest import JWT_SECRET
from tests.helpers import Client, assert_error


async def _count(client: Client, token: str) -> int:
    return len((await client.http.get("/jobs", headers=client.auth(token))).json())


async def test_the_same_key_and_body_replays_the_first_answer(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "order-42"}
    first = await client.http.post("/jobs", json={"type": "echo", "payload": 1}, headers=headers)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # The same JSON, written differently, is the same body.
    again = await client.http.post(
        "/jobs", content=b'{ "payload": 1,  "type": "echo" }', headers=headers
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await _count(client, token) == 1


async def test_the_same_key_with_another_body_is_422(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "k1"}
    await client.http.post("/jobs", json={"type": "echo", "payload": 1}, headers=headers)
    other = await client.http.post("/jobs", json={"type": "echo", "payload": 2}, headers=headers)
    assert_error(other, 422, "/jobs")
    assert await _count(client, token) == 1


async def test_the_same_key_while_the_first_request_runs_is_409(client: Client) -> None:
    token = await client.register()
    user = UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    body = {"type": "echo"}
    store = IdempotencyStore(client.backends.kv)
    assert await store.begin(user, "busy", fingerprint("POST", "/jobs", body)) is None
    response = await client.http.post(
        "/jobs", json=body, headers={**client.auth(token), "Idempotency-Key": "busy"}
    )
    assert_error(response, 409, "/jobs")
    assert await _count(client, token) == 0


async def test_keys_belong_to_one_user(client: Client) -> None:
    alice, bob = await client.register(), await client.register()
    for token in (alice, bob):
        response = await client.http.post(
            "/jobs", json={"type": "echo"}, headers={**client.auth(token), "Idempotency-Key": "x"}
        )
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response.headers
    assert await _count(client, alice) == await _count(client, bob) == 1


async def test_a_rejected_request_does_not_use_up_its_key(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "retry-me"}
    bad = await client.http.post("/jobs", json={"type": "echo", "priority": 11}, headers=headers)
    assert_error(bad, 400)
    good = await client.http.post("/jobs", json={"type": "echo"}, headers=headers)
    assert good.status_code == 201 and "Idempotent-Replayed" not in good.headers


async def test_a_batch_can_be_idempotent_too(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "batch-1"}
    body = {"jobs": [{"type": "echo"}, {"type": "echo"}]}
    first = await client.http.post("/jobs/batch", json=body, headers=headers)
    second = await client.http.post("/jobs/batch", json=body, headers=headers)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert await _count(client, token) == 2
