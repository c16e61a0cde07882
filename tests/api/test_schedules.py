"""/schedules: create, read, list, pause, resume, delete; validation, ownership and tokens."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update

from cloudtask.contracts.api import ScheduleCreate
from cloudtask.db import session
from cloudtask.db.tables import schedules
from tests.helpers import Client, assert_error

SCHEDULE_FIELDS = {
    "id", "name", "cron", "timezone", "type", "payload", "priority", "maxAttempts",
    "timeoutSeconds", "paused", "nextRunAt", "lastRunAt", "createdAt",
}  # fmt: skip
BODY = {"name": "every five minutes", "cron": "*/5 * * * *", "type": "echo", "payload": {"n": 1}}


def _time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def _create(client: Client, token: str, **changes: Any) -> dict[str, Any]:
    response = await client.http.post("/schedules", json=BODY | changes, headers=client.auth(token))
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def _list(client: Client, token: str) -> list[dict[str, Any]]:
    response = await client.http.get("/schedules", headers=client.auth(token))
    assert response.status_code == 200, response.text
    schedules: list[dict[str, Any]] = response.json()
    return schedules


async def test_a_schedule_is_created_with_every_field_of_the_contract(client: Client) -> None:
    token = await client.register()
    before = datetime.now(UTC)
    schedule = await _create(client, token)
    assert set(schedule) == SCHEDULE_FIELDS
    uuid.UUID(schedule["id"])
    assert (schedule["name"], schedule["cron"], schedule["type"]) == (
        "every five minutes",
        "*/5 * * * *",
        "echo",
    )
    assert schedule["timezone"] == "UTC"
    assert schedule["payload"] == {"n": 1}
    assert (schedule["priority"], schedule["maxAttempts"], schedule["timeoutSeconds"]) == (
        5,
        3,
        300,
    )
    assert schedule["paused"] is False
    assert schedule["lastRunAt"] is None
    created = _time(schedule["createdAt"])
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    next_run = _time(schedule["nextRunAt"])
    assert created < next_run <= created + timedelta(minutes=5)
    assert next_run.minute % 5 == 0 and next_run.second == 0 and next_run.microsecond == 0


async def test_a_schedule_keeps_its_zone_and_options_and_fires_on_local_time(
    client: Client,
) -> None:
    token = await client.register()
    schedule = await _create(
        client,
        token,
        cron="30 9 * * *",
        timezone="America/New_York",
        type="sleep",
        payload={"seconds": 1.5},
        priority=8,
        maxAttempts=5,
        timeoutSeconds=12.5,
    )
    assert schedule["timezone"] == "America/New_York"
    assert schedule["payload"] == {"seconds": 1.5}
    assert (schedule["priority"], schedule["maxAttempts"], schedule["timeoutSeconds"]) == (
        8,
        5,
        12.5,
    )
    local = _time(schedule["nextRunAt"]).astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert datetime.now(UTC) < local <= datetime.now(UTC) + timedelta(days=1)


async def _refused(client: Client, token: str, body: dict[str, Any]) -> list[str]:
    """Post ``body``, expect a 400 that stores nothing; the fields its details name."""
    response = await client.http.post("/schedules", json=body, headers=client.auth(token))
    error = assert_error(response, 400, "/schedules")
    assert {d["location"] for d in error["details"]} == {"body"}, error
    return [d["field"] for d in error["details"]]


async def test_an_invalid_cron_is_a_400_naming_cron(client: Client) -> None:
    token = await client.register()
    for cron in [
        "61 * * * *", "0 0 * * * *", "* * * *", "garbage", "@reboot", "0 0 31 2 *", "5-5/0 * * * *"
    ]:  # fmt: skip
        assert await _refused(client, token, BODY | {"cron": cron}) == ["cron"], cron
    assert await _list(client, token) == []


async def test_a_cron_outside_the_documented_shape_is_a_400_even_if_croniter_reads_it(
    client: Client,
) -> None:
    token = await client.register()
    shape = re.compile(ScheduleCreate.model_json_schema()["properties"]["cron"]["pattern"])
    odd = ["@HOURLY", "@Daily", "0\t0 * * *", "0  0 * * *", " 0 0 * * *", "0 0 * * *\n"]
    for cron in odd:
        assert not shape.fullmatch(cron), cron
        assert await _refused(client, token, BODY | {"cron": cron}) == ["cron"], cron
    assert await _list(client, token) == []
    for cron in ["@hourly", "0 0 * * MON-FRI", "*/5 * ? JAN,FEB 1#2", "0 0 L * *"]:
        assert shape.fullmatch(cron), cron
        response = await client.http.post(
            "/schedules", json=BODY | {"cron": cron}, headers=client.auth(token)
        )
        assert response.status_code == 201, (cron, response.text)


async def test_an_unknown_time_zone_is_a_400_naming_timezone(client: Client) -> None:
    token = await client.register()
    for zone in ["Mars/Olympus_Mons", "America", "../../etc/passwd", "utc", "localtime"]:
        assert await _refused(client, token, BODY | {"timezone": zone}) == ["timezone"], zone
    assert await _list(client, token) == []


async def test_a_bad_cron_and_a_bad_zone_are_both_named(client: Client) -> None:
    token = await client.register()
    body = BODY | {"cron": "nope", "timezone": "Nowhere/Land"}
    assert sorted(await _refused(client, token, body)) == ["cron", "timezone"]


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"cron": 5}, "cron"),
    ({"timezone": 1}, "timezone"),
    ({"type": "Bad Type!"}, "type"),
    ({"type": None}, "type"),
    ({"priority": 10}, "priority"),
    ({"priority": "5"}, "priority"),
    ({"maxAttempts": 0}, "maxAttempts"),
    ({"timeoutSeconds": 0}, "timeoutSeconds"),
    ({"type": "sleep", "payload": {"seconds": 0}}, "payload.seconds"),
    ({"type": "email", "payload": {"subject": "hi"}}, "payload.to"),
]


async def test_each_other_bad_field_is_a_400_naming_it(client: Client) -> None:
    token = await client.register()
    for changes, field in BAD_FIELDS:
        body = {k: v for k, v in (BODY | changes).items() if v is not None}
        assert field in await _refused(client, token, body), changes
    assert await _list(client, token) == []


async def test_list_get_pause_resume_and_delete(client: Client) -> None:
    token = await client.register()
    first = await _create(client, token, name="first")
    second = await _create(client, token, name="second", cron="0 * * * *")
    assert [s["id"] for s in await _list(client, token)] == [first["id"], second["id"]]
    auth = client.auth(token)

    got = await client.http.get(f"/schedules/{first['id']}", headers=auth)
    assert got.status_code == 200 and got.json() == first

    paused = await client.http.post(f"/schedules/{first['id']}/pause", headers=auth)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and paused.json()["nextRunAt"] is None
    assert (
        await client.http.get(f"/schedules/{first['id']}", headers=auth)
    ).json() == paused.json()

    resumed = await client.http.post(f"/schedules/{first['id']}/resume", headers=auth)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["paused"] is False
    next_run = _time(resumed.json()["nextRunAt"])
    assert datetime.now(UTC) < next_run <= datetime.now(UTC) + timedelta(minutes=5)
    assert next_run.minute % 5 == 0 and next_run.second == 0
    again = await client.http.post(f"/schedules/{first['id']}/resume", headers=auth)
    assert again.status_code == 200 and again.json() == resumed.json()

    deleted = await client.http.delete(f"/schedules/{first['id']}", headers=auth)
    assert deleted.status_code == 204 and deleted.content == b""
    gone = await client.http.get(f"/schedules/{first['id']}", headers=auth)
    assert_error(gone, 404, f"/schedules/{first['id']}")
    assert [s["id"] for s in await _list(client, token)] == [second["id"]]


def _paths(schedule_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/schedules/{schedule_id}"),
        ("POST", f"/schedules/{schedule_id}/pause"),
        ("POST", f"/schedules/{schedule_id}/resume"),
        ("DELETE", f"/schedules/{schedule_id}"),
    ]


async def test_another_users_unknown_and_malformed_ids_are_the_same_404(client: Client) -> None:
    owner = await client.register()
    schedule = await _create(client, owner)
    intruder = await client.register()
    messages = set()
    for schedule_id in (schedule["id"], str(uuid.uuid4()), "not-a-uuid", "12345", "a%2Fb"):
        for method, path in _paths(schedule_id):
            response = await client.http.request(method, path, headers=client.auth(intruder))
            messages.add(assert_error(response, 404, path)["message"])
    # Nor does the owner find it at another spelling of its id than the API's.
    for spelling in (f"{{{schedule['id']}}}", uuid.UUID(schedule["id"]).hex):
        for method, path in _paths(spelling):
            response = await client.http.request(method, path, headers=client.auth(owner))
            messages.add(assert_error(response, 404, path)["message"])
    assert messages == {"Schedule not found"}
    assert await _list(client, intruder) == []
    mine = await client.http.get(f"/schedules/{schedule['id']}", headers=client.auth(owner))
    assert mine.status_code == 200 and mine.json() == schedule


async def test_every_schedules_path_needs_a_token(client: Client) -> None:
    token = await client.register()
    schedule = await _create(client, token)
    requests = [("POST", "/schedules"), ("GET", "/schedules"), *_paths(schedule["id"])]
    for method, path in requests:
        body = BODY if (method, path) == ("POST", "/schedules") else None
        response = await client.http.request(method, path, json=body)
        assert_error(response, 401, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await _list(client, token) == [schedule]


async def test_a_schedule_that_can_no_longer_be_read_is_not_resumed(client: Client) -> None:
    token = await client.register()
    schedule = await _create(client, token)
    # Stored before a zone left the time-zone database; the scheduler paused it.
    async with session.transaction(client.backends.db) as conn:
        await conn.execute(
            update(schedules)
            .where(schedules.c.id == uuid.UUID(schedule["id"]))
            .values(timezone="Gone/Away", paused=True)
        )
    path = f"/schedules/{schedule['id']}/resume"
    response = await client.http.post(path, headers=client.auth(token))
    assert "Gone/Away" in assert_error(response, 409, path)["message"]
    after = await client.http.get(f"/schedules/{schedule['id']}", headers=client.auth(token))
    assert after.json()["paused"] is True


async def test_an_empty_or_long_text_field_is_told_in_a_strings_words(client: Client) -> None:
    token = await client.register()
    body = BODY | {"name": "", "timezone": "x" * 65}
    response = await client.http.post("/schedules", json=body, headers=client.auth(token))
    details = assert_error(response, 400, "/schedules")["details"]
    assert {d["field"]: d["message"] for d in details} == {
        "name": "String should have at least 1 character",
        "timezone": "String should have at most 64 characters",
    }
