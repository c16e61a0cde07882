"""The scheduler in the running stack: delayed jobs, cancelled ones, and cron schedules firing.

Schedules are made due by moving their next firing into the past in the database, so no test
waits for a minute to turn.
"""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtask.policies import cron
from cloudtask.scheduler import service as scheduler_service
from cloudtask.settings import Settings
from tests.helpers import Client, eventually, wait_for_status
from tests.services import scheduling
from tests.services.conftest import Stack


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"scheduler_poll_seconds": 0.1})


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _far_hour() -> int:
    """An hour of the day twelve hours away: firings in it are neither due nor about to be."""
    return (datetime.now(UTC).hour + 12) % 24


async def _schedule(client: Client, token: str, **body: Any) -> dict[str, Any]:
    body = {"name": "test", "type": "echo", "payload": {"from": "schedule"}} | body
    response = await client.http.post("/schedules", json=body, headers=client.auth(token))
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def _get_schedule(client: Client, token: str, schedule_id: str) -> dict[str, Any]:
    response = await client.http.get(f"/schedules/{schedule_id}", headers=client.auth(token))
    assert response.status_code == 200, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def _jobs_of(client: Client, token: str, schedule_id: str) -> list[dict[str, Any]]:
    response = await client.http.get("/jobs", headers=client.auth(token))
    assert response.status_code == 200, response.text
    return [job for job in response.json() if job["scheduleId"] == schedule_id]


async def _first_job_of(client: Client, token: str, schedule_id: str) -> dict[str, Any]:
    async def fired() -> dict[str, Any] | None:
        found = await _jobs_of(client, token, schedule_id)
        return found[0] if found else None

    return await eventually(fired)


async def test_a_delayed_job_waits_scheduled_then_runs_after_its_run_at(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload=1, delaySeconds=1.5)
    assert job["status"] == "SCHEDULED"
    run_at = _time(job["runAt"])
    assert run_at - _time(job["createdAt"]) == timedelta(seconds=1.5)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED" and done["result"] == 1
    assert _time(done["startedAt"]) >= run_at


async def test_a_job_whose_run_at_has_passed_runs_at_once(stack: Stack) -> None:
    token = await stack.client.register()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    job = await stack.client.create_job(token, type="echo", runAt=past)
    assert job["status"] == "PENDING"
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert done["attempts"] == 1


async def test_a_cancelled_scheduled_job_never_runs(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", delaySeconds=0.3)
    cancel = await stack.client.http.post(
        f"/jobs/{job['id']}/cancel", headers=stack.client.auth(token)
    )
    assert cancel.status_code == 200 and cancel.json()["status"] == "CANCELLED"
    # A job due after the cancelled one has run: the scheduler went past the cancelled one's time.
    later = await stack.client.create_job(token, type="echo", delaySeconds=0.5)
    await wait_for_status(stack.client, token, later["id"], "COMPLETED")
    await scheduling.rounds_pass(stack.client, token)
    after = await stack.client.get_job(token, job["id"])
    assert after["status"] == "CANCELLED"
    assert after["attempts"] == 0 and after["startedAt"] is None and after["result"] is None


async def test_a_due_schedule_fires_exactly_one_job_with_its_schedule_id(stack: Stack) -> None:
    token = await stack.client.register()
    hour = _far_hour()
    schedule = await _schedule(
        stack.client, token, cron=f"0 {hour} * * *", priority=7, maxAttempts=2, timeoutSeconds=20
    )
    due = (datetime.now(UTC) - timedelta(seconds=1)).replace(microsecond=0)
    await scheduling.set_next_run(stack.backends, schedule["id"], due)

    job = await _first_job_of(stack.client, token, schedule["id"])
    assert (job["type"], job["payload"]) == ("echo", {"from": "schedule"})
    assert (job["priority"], job["maxAttempts"], job["timeoutSeconds"]) == (7, 2, 20)
    assert _time(job["runAt"]) == due
    assert uuid.UUID(job["id"]).version == 7  # time-ordered, as the api's (db/ids.py)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert done["result"] == {"from": "schedule"}

    await scheduling.rounds_pass(stack.client, token)
    assert [j["id"] for j in await _jobs_of(stack.client, token, schedule["id"])] == [job["id"]]
    assert await scheduling.firings(stack.backends, schedule["id"]) == 1
    after = await _get_schedule(stack.client, token, schedule["id"])
    assert _time(after["lastRunAt"]) == due
    next_run = _time(after["nextRunAt"])
    assert next_run > datetime.now(UTC) and (next_run.hour, next_run.minute) == (hour, 0)


async def test_firings_recorded_more_than_a_day_ago_are_forgotten_and_later_ones_kept(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await stack.client.register()
    schedule = await _schedule(stack.client, token, cron=f"0 {_far_hour()} * * *")

    async def leading() -> bool:
        return stack.scheduler.leadership.acting

    await eventually(leading)
    await asyncio.sleep(0.3)  # its first pass, at once (the next in an hour)
    now = datetime.now(UTC)
    # (fire time, when recorded): a time long past fired a minute ago (its schedulers were
    # down for days) is kept for a day from then.
    kept = [(now - timedelta(days=3), now - timedelta(minutes=1)), (now - timedelta(hours=23),) * 2]
    forgotten = [(now - timedelta(days=days),) * 2 for days in (30, 29, 2)]
    for fire_at, recorded_at in [*kept, *forgotten, (now - timedelta(hours=25),) * 2]:
        await scheduling.add_firing(stack.backends, schedule["id"], fire_at, recorded_at)
    monkeypatch.setattr(scheduler_service, "FORGET_BATCH", 3)  # a batch, then what is left
    await stack.scheduler._forget_firings()
    times = await scheduling.firing_times(stack.backends, schedule["id"])
    assert times == [fire_at for fire_at, _ in kept]
    assert await _get_schedule(stack.client, token, schedule["id"]) == schedule

    # And hourly: the leader's next pass.
    await scheduling.add_firing(stack.backends, schedule["id"], *forgotten[0])
    monkeypatch.setattr(scheduler_service, "FORGET_FIRINGS_EVERY", 0.05)

    async def forgotten_again() -> bool:
        return await scheduling.firings(stack.backends, schedule["id"]) == len(kept)

    await eventually(forgotten_again)


async def test_a_schedule_missed_for_many_minutes_fires_once_for_the_latest(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    hour = _far_hour()
    expression = f"* {hour} * * *"  # every minute of one hour of the day
    schedule = await _schedule(stack.client, token, cron=expression)
    # The scheduler was away for that whole hour: sixty firings missed.
    zone = cron.parse_zone("UTC")
    now = datetime.now(UTC)
    start_of_hour = cron.latest_fire(f"0 {hour} * * *", zone, now - timedelta(days=1), now)
    await scheduling.set_next_run(stack.backends, schedule["id"], start_of_hour)

    job = await _first_job_of(stack.client, token, schedule["id"])
    latest = start_of_hour + timedelta(minutes=59)
    assert _time(job["runAt"]) == latest
    await scheduling.rounds_pass(stack.client, token)
    assert len(await _jobs_of(stack.client, token, schedule["id"])) == 1
    assert await scheduling.firings(stack.backends, schedule["id"]) == 1
    after = await _get_schedule(stack.client, token, schedule["id"])
    assert _time(after["lastRunAt"]) == latest
    assert _time(after["nextRunAt"]) == start_of_hour + timedelta(days=1)


async def test_a_paused_schedule_does_not_fire(stack: Stack) -> None:
    token = await stack.client.register()
    paused = await _schedule(stack.client, token, cron=f"0 {_far_hour()} * * *")
    active = await _schedule(stack.client, token, cron=f"0 {_far_hour()} * * *")
    response = await stack.client.http.post(
        f"/schedules/{paused['id']}/pause", headers=stack.client.auth(token)
    )
    assert response.status_code == 200, response.text
    past = datetime.now(UTC) - timedelta(minutes=5)
    for schedule in (paused, active):
        await scheduling.set_next_run(stack.backends, schedule["id"], past)

    await _first_job_of(stack.client, token, active["id"])
    await scheduling.rounds_pass(stack.client, token)
    assert await _jobs_of(stack.client, token, paused["id"]) == []
    assert await scheduling.firings(stack.backends, paused["id"]) == 0
    assert (await _get_schedule(stack.client, token, paused["id"]))["lastRunAt"] is None


async def test_a_schedule_that_cannot_be_read_is_paused_and_the_others_still_fire(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    good = await _schedule(stack.client, token, cron=f"0 {_far_hour()} * * *")
    past = datetime.now(UTC) - timedelta(minutes=5)
    owner = await scheduling.add_user(stack.backends)
    broken = [
        await scheduling.add_schedule(
            stack.backends, owner, next_run_at=past - timedelta(minutes=1), **values
        )
        # The last one was read wrong before it was refused: stored then, paused now.
        for values in (
            {"timezone": "Nowhere/Land"},
            {"cron": "garbage"},
            {"cron": "0 0 * * 1L,MON"},
        )
    ]
    await scheduling.set_next_run(stack.backends, good["id"], past)

    await _first_job_of(stack.client, token, good["id"])
    for schedule_id in broken:
        assert await scheduling.jobs_of_schedule(stack.backends, schedule_id) == []
        assert (await scheduling.schedule_row(stack.backends, schedule_id)).paused is True
