"""The Idempotency-Key header of POST /jobs (and /jobs/batch, /schedules)."""

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
from sqlalchemy import delete

from cloudtask.api import idempotency
from cloudtask.api.app import create_app
from cloudtask.api.errors import ApiError
from cloudtask.api.group_commit import GroupCommit
from cloudtask.api.idempotency import Created, IdempotencyStore, Intent, Replay, fingerprint
from cloudtask.contracts import jsoncodec
from cloudtask.db import session
from cloudtask.db.tables import jobs as jobs_table
from cloudtask.errors import DatabaseUnavailable, KVUnavailable
from tests.conftest import JWT_SECRET, Backends
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


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # sent without a Content-Length: past the submit lane, through the route


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
async def test_a_key_is_the_same_with_spaces_or_tabs_around_it(
    client: Client, chunked: bool
) -> None:
    # HTTP does not count them as part of the value; servers strip them before it but not
    # always after it, and a client's retry may add or drop one.
    token = await client.register()
    body = b'{"type": "echo", "payload": "ws"}'
    answers = []
    for key in ("order-7", "order-7  ", "\torder-7\t", " order-7"):
        headers = {**client.auth(token), "Idempotency-Key": key}
        content = _chunked(body) if chunked else body
        answers.append(await client.http.post("/jobs", content=content, headers=headers))
    assert [answer.status_code for answer in answers] == [201] * 4
    assert [answer.headers.get("Idempotent-Replayed") for answer in answers] == [
        None, "true", "true", "true"
    ]  # fmt: skip
    assert {answer.json()["id"] for answer in answers} == {answers[0].json()["id"]}
    assert await _count(client, token) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
async def test_a_keys_length_is_counted_in_characters(client: Client, chunked: bool) -> None:
    token = await client.register()
    body = b'{"type": "echo"}'
    for key in ("\u00e9" * 255, "\u6f22" * 255, "\U0001f600" * 255):  # 2, 3 and 4 bytes each
        headers = {**client.auth(token), "Idempotency-Key": key.encode()}
        for replayed in (None, "true"):
            content = _chunked(body) if chunked else body
            answer = await client.http.post("/jobs", content=content, headers=headers)
            assert answer.status_code == 201, answer.text
            assert answer.headers.get("Idempotent-Replayed") == replayed
    assert await _count(client, token) == 3


async def test_the_same_key_with_another_body_is_422(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "k1"}
    await client.http.post("/jobs", json={"type": "echo", "payload": 1}, headers=headers)
    other = await client.http.post("/jobs", json={"type": "echo", "payload": 2}, headers=headers)
    assert_error(other, 422, "/jobs")
    assert await _count(client, token) == 1


async def test_a_body_is_compared_as_the_json_it_parses_to(client: Client) -> None:
    # As the README says: escapes and exponents aside, but an integer is not a decimal, and a
    # default spelled out is another body.
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "k2", "Content-Type": "application/json"}
    first = b'{"type": "echo", "payload": {"s": "A", "n": 1.0}}'
    assert (await client.http.post("/jobs", content=first, headers=headers)).status_code == 201
    same = b'{"payload": {"n": 1E0, "s": "\\u0041"}, "type": "echo"}'
    replayed = await client.http.post("/jobs", content=same, headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    for other in (
        b'{"type": "echo", "payload": {"s": "A", "n": 1}}',
        b'{"type": "echo", "payload": {"s": "A", "n": 1.0}, "priority": 5}',
    ):
        assert_error(await client.http.post("/jobs", content=other, headers=headers), 422)
    assert await _count(client, token) == 1


async def test_the_same_key_while_the_first_request_runs_is_409(client: Client) -> None:
    token = await client.register()
    user = UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    body = {"type": "echo"}
    store = IdempotencyStore(client.backends.kv)
    claim = await store.begin(user, "busy", fingerprint("POST", "/jobs", body), _intent())
    assert isinstance(claim, bytes)
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


async def test_an_answer_kept_without_its_location_is_replayed_with_it(client: Client) -> None:
    # Answers are kept as status and body alone (as a version before 201s named the job in
    # Location kept them too): a replay reads the job's path from the body.
    token = await client.register()
    user_id = UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    body = {"type": "echo"}
    job = await client.create_job(token, **body)
    store = IdempotencyStore(client.backends.kv)
    print_ = fingerprint("POST", "/jobs", body)
    assert isinstance(await store.begin(user_id, "kept-before", print_, _intent()), bytes)
    await store.finish(user_id, "kept-before", print_, 201, jsoncodec.dumps(job))
    headers = {**client.auth(token), "Idempotency-Key": "kept-before"}
    again = await client.http.post("/jobs", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/jobs/{job['id']}"
    assert again.json() == job


async def test_keys_of_other_bytes_are_other_keys(client: Client) -> None:
    # The same character in Latin-1 and in UTF-8, and an overlong form beside what it would
    # mean: bytes that are not UTF-8 are a key of their own, not read as another one.
    token = await client.register()
    pairs = [(b"\xe9", "\u00e9".encode()), (b"\xc0\x80", "\u00c0\u0080".encode())]
    for first, second in pairs:
        for key in (first, second):
            headers = {**client.auth(token), "Idempotency-Key": key}
            answer = await client.http.post("/jobs", json={"type": "echo"}, headers=headers)
            assert answer.status_code == 201, answer.text
            assert "Idempotent-Replayed" not in answer.headers, key
    assert await _count(client, token) == 4


async def test_an_answer_kept_under_a_key_read_as_latin_1_is_replayed(client: Client) -> None:
    # A version before keys were read as UTF-8 kept them under the digest of the header's
    # Latin-1 text: a retry across the upgrade, within the 24 hours, still replays.
    token = await client.register()
    user_id = UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    body = {"type": "echo"}
    job = await client.create_job(token, **body)
    sent = "\u00e9t\u00e9-42".encode()
    digest = hashlib.sha256(sent.decode("latin-1").encode()).hexdigest()
    record = {
        "state": "done",
        "fingerprint": fingerprint("POST", "/jobs", body),
        "status": 201,
        "body": jsoncodec.dumps(job).decode(),
    }
    await client.backends.kv.set(f"idem:{user_id}:{digest}", jsoncodec.dumps(record), ttl=60)
    headers = {**client.auth(token), "Idempotency-Key": sent}
    again = await client.http.post("/jobs", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == job


async def test_a_batch_can_be_idempotent_too(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "batch-1"}
    body = {"jobs": [{"type": "echo"}, {"type": "echo"}]}
    first = await client.http.post("/jobs/batch", json=body, headers=headers)
    second = await client.http.post("/jobs/batch", json=body, headers=headers)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert await _count(client, token) == 2


async def test_a_schedule_can_be_idempotent_too(client: Client) -> None:
    # A second schedule made by a retry would fire beside the first for ever.
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "nightly"}
    body = {"name": "nightly", "cron": "0 3 * * *", "type": "echo"}
    first = await client.http.post("/schedules", json=body, headers=headers)
    second = await client.http.post("/schedules", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["Location"] == first.headers["Location"]
    other = await client.http.post(
        "/schedules", json={**body, "cron": "0 4 * * *"}, headers=headers
    )
    assert_error(other, 422, "/schedules")
    too_long = {**client.auth(token), "Idempotency-Key": "k" * 256}
    assert_error(await client.http.post("/schedules", json=body, headers=too_long), 400)
    listed = await client.http.get("/schedules", headers=client.auth(token))
    assert [schedule["id"] for schedule in listed.json()] == [first.json()["id"]]


async def test_a_request_running_longer_than_its_claim_lives_is_still_in_progress(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waiting for a database connection and then its statement, a request may outlast the
    # claim's lifetime; the same key sent again meanwhile must not run it a second time.
    monkeypatch.setattr(idempotency, "IN_FLIGHT_TTL", 0.3)
    store = IdempotencyStore(backends.kv)
    user, print_ = uuid4(), fingerprint("POST", "/jobs", {"type": "echo"})
    intent = _intent()
    claim = await store.begin(user, "slow", print_, intent)
    assert isinstance(claim, bytes)
    holding = asyncio.ensure_future(store.hold(user, "slow", claim))
    try:
        await asyncio.sleep(0.8)  # more than twice the claim's lifetime
        with pytest.raises(ApiError) as refused:
            await store.begin(user, "slow", print_, _intent())
        assert refused.value.status == 409
    finally:
        holding.cancel()
    await asyncio.sleep(0.5)  # its process died: the claim lapses, naming what it was to write
    lapsed = await store.begin(user, "slow", print_, _intent())
    assert isinstance(lapsed, Replay)
    assert (lapsed.unsure, lapsed.status, lapsed.body) == (intent.made, 201, intent.body)


def _intent() -> Intent:
    return Intent(Created("job", str(uuid4())), 201, b'{"id": "x"}')


@pytest.mark.parametrize("written", [True, False], ids=["written", "not-written"])
async def test_a_retry_after_the_process_of_the_first_request_died_creates_once(
    client: Client, monkeypatch: pytest.MonkeyPatch, written: bool
) -> None:
    # Killed between its commit and keeping its answer, a request left only its claim: once
    # that lapsed, a retry created the job a second time.
    monkeypatch.setattr(idempotency, "IN_FLIGHT_TTL", 0.2)
    token = await client.register()
    user = UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    body = {"type": "echo", "payload": "once"}
    first = await client.create_job(token, **body)  # as the dead request wrote it, or not:
    if not written:
        async with client.backends.db.begin() as conn:
            await conn.execute(delete(jobs_table).where(jobs_table.c.id == UUID(first["id"])))
    job_id = first["id"]
    store = IdempotencyStore(client.backends.kv)
    print_ = fingerprint("POST", "/jobs", body)
    intent = Intent(Created("job", job_id), 201, jsoncodec.dumps(first))
    assert isinstance(await store.begin(user, "died", print_, intent), bytes)
    await asyncio.sleep(0.3)

    headers = {**client.auth(token), "Idempotency-Key": "died"}
    retry = await client.http.post("/jobs", json=body, headers=headers)
    again = await client.http.post("/jobs", json=body, headers=headers)

    assert retry.status_code == 201, retry.text
    assert ("Idempotent-Replayed" in retry.headers) is written
    assert (retry.json()["id"] == job_id) is written
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == retry.json()
    assert await _count(client, token) == 1


@contextlib.asynccontextmanager
async def _client_taking_5xx(backends: Backends, settings: Any) -> AsyncIterator[Client]:
    """A client of the api as the ``client`` fixture's, but one that a 5xx does not fail:
    these tests provoke them."""
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield Client(http, backends)


def _commit_of_unknown_outcome(monkeypatch: pytest.MonkeyPatch, route: str, made: bool) -> None:
    """The next write of ``route`` fails as a connection lost at its commit would: after the
    commit (``made``) or before it, the api unable to tell which."""
    lost = DatabaseUnavailable("database: connection lost")
    armed = [True]

    def failing(write: Any) -> Any:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not armed[0]:
                return await write(*args, **kwargs)
            armed[0] = False
            if made:
                await write(*args, **kwargs)
            raise lost

        return wrapped

    if route == "/schedules":
        transaction = session.transaction

        @contextlib.asynccontextmanager
        async def failing_transaction(engine: Any) -> AsyncIterator[Any]:
            if not armed[0]:
                async with transaction(engine) as conn:
                    yield conn
                return
            armed[0] = False
            if not made:
                raise lost
            async with transaction(engine) as conn:
                yield conn
            raise lost

        monkeypatch.setattr(session, "transaction", failing_transaction)
    else:
        name = "store" if route == "/jobs" else "write"
        monkeypatch.setattr(GroupCommit, name, failing(getattr(GroupCommit, name)))


@pytest.mark.parametrize("made", [True, False], ids=["made", "not-made"])
@pytest.mark.parametrize(
    ("route", "body", "listing"),
    [
        ("/jobs", {"type": "echo"}, "/jobs"),
        ("/jobs/batch", {"jobs": [{"type": "echo"}, {"type": "echo"}]}, "/jobs"),
        ("/schedules", {"name": "n", "cron": "0 3 * * *", "type": "echo"}, "/schedules"),
    ],
)
async def test_a_retry_after_a_commit_of_unknown_outcome_creates_once(
    backends: Backends,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    body: dict[str, Any],
    listing: str,
    made: bool,
) -> None:
    # The first answer is a 503 whether or not the commit was made; released, its key let the
    # retry create it again when it was (two jobs, both run).
    async with _client_taking_5xx(backends, settings) as client:
        http = client.http
        token = await client.register()
        headers = {**client.auth(token), "Idempotency-Key": "unknown-outcome"}
        _commit_of_unknown_outcome(monkeypatch, route, made)

        first = await http.post(route, json=body, headers=headers)
        second = await http.post(route, json=body, headers=headers)
        third = await http.post(route, json=body, headers=headers)
        listed = (await http.get(listing, headers=client.auth(token))).json()

    assert_error(first, 503, route)
    assert second.status_code == 201, second.text
    assert ("Idempotent-Replayed" in second.headers) is made
    assert third.headers["Idempotent-Replayed"] == "true"
    assert third.json() == second.json()
    answered = second.json() if isinstance(second.json(), list) else [second.json()]
    assert sorted(item["id"] for item in listed) == sorted(item["id"] for item in answered)


async def test_a_retry_after_a_request_cancelled_while_its_job_was_stored_replays_it(
    backends: Backends, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server cancels requests still running when its graceful shutdown ends; the group
    # commit a cancelled request joined goes on without it, and may commit its job.
    store = GroupCommit.store
    finished = asyncio.Event()

    async def committed_later(self: GroupCommit, job: Any) -> None:
        await asyncio.sleep(0.2)
        await store(self, job)
        finished.set()

    async def slow_store(self: GroupCommit, job: Any) -> None:
        await asyncio.shield(asyncio.ensure_future(committed_later(self, job)))

    async with _client_taking_5xx(backends, settings) as client:
        http = client.http
        token = await client.register()
        headers = {**client.auth(token), "Idempotency-Key": "cancelled"}
        with monkeypatch.context() as patched:
            patched.setattr(GroupCommit, "store", slow_store)
            request = asyncio.ensure_future(
                http.post("/jobs", json={"type": "echo"}, headers=headers)
            )
            await asyncio.sleep(0.05)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            await asyncio.wait_for(finished.wait(), timeout=5)

        retry = await http.post("/jobs", json={"type": "echo"}, headers=headers)
        listed = (await http.get("/jobs", headers=client.auth(token))).json()

    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert [job["id"] for job in listed] == [retry.json()["id"]]


async def test_a_renewal_whose_answer_was_lost_does_not_end_the_claim(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The renewal landed but its answer did not (a timeout): the next one, expecting the claim
    # as it was before, found it changed and stopped renewing; the claim lapsed while the
    # request still ran, and a retry created the job a second time.
    monkeypatch.setattr(idempotency, "IN_FLIGHT_TTL", 0.3)
    kv = client.backends.kv
    claim = kv.claim
    lost = [True]

    async def answer_lost_once(*args: Any, **kwargs: Any) -> Any:
        held = await claim(*args, **kwargs)
        if lost[0]:
            lost[0] = False
            raise KVUnavailable("redis: timed out")
        return held

    store = GroupCommit.store

    async def slow_store(self: GroupCommit, job: Any) -> None:
        await asyncio.sleep(1.5)
        await store(self, job)

    monkeypatch.setattr(kv, "claim", answer_lost_once)
    monkeypatch.setattr(GroupCommit, "store", slow_store)
    token = await client.register()
    headers = {**client.auth(token), "Idempotency-Key": "renewed"}
    first = asyncio.ensure_future(client.http.post("/jobs", json={"type": "echo"}, headers=headers))
    await asyncio.sleep(0.9)  # three claim lifetimes: renewed three times meanwhile
    retry = await client.http.post("/jobs", json={"type": "echo"}, headers=headers)

    assert_error(retry, 409, "/jobs")
    assert (await first).status_code == 201
    assert await _count(client, token) == 1
