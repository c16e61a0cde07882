"""POST /auth/register and /auth/login."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest

from cloudtask.db.queries.users import email_key
from tests.conftest import JWT_SECRET
from tests.helpers import Client, assert_error, unique_email


async def test_register_answers_201_with_a_token_under_both_names(client: Client) -> None:
    email = unique_email()
    response = await client.http.post(
        "/auth/register", json={"email": email, "password": "password1"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token"] == body["accessToken"]
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 3600
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    assert isinstance(claims["sub"], str)
    assert claims["email"] == email
    assert claims["exp"] - claims["iat"] == 3600
    assert set(claims) == {"sub", "email", "iat", "exp"}


async def test_an_email_can_register_once_whatever_its_case(client: Client) -> None:
    email = unique_email()
    await client.register(email)
    for variant in (email, email.upper()):
        response = await client.http.post(
            "/auth/register", json={"email": variant, "password": "password1"}
        )
        assert_error(response, 409, "/auth/register")


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "password1"},
        {"email": "a@", "password": "password1"},
        {"email": "@example.com", "password": "password1"},
        {"email": "a b@example.com", "password": "password1"},
        {"email": "x.@example.com", "password": "password1"},
        {"email": ".x@example.com", "password": "password1"},
        {"email": "x..y@example.com", "password": "password1"},
        {"email": f"{'x' * 65}@example.com", "password": "password1"},
        {"email": "x@example", "password": "password1"},
        {"email": "x@-example.com", "password": "password1"},
        {"email": 42, "password": "password1"},
        {"email": "ok@example.com", "password": "short77"},
        {"email": "ok@example.com", "password": "x" * 129},
        {"email": "ok@example.com", "password": 12345678},
        {"email": "ok@example.com"},
        {"password": "password1"},
    ],
)
async def test_register_refuses_invalid_emails_and_passwords(
    client: Client, body: dict[str, object]
) -> None:
    response = await client.http.post("/auth/register", json=body)
    error = assert_error(response, 400, "/auth/register")
    assert error["details"] and all(d["location"] == "body" for d in error["details"])


async def test_passwords_of_8_and_128_characters_of_any_script_are_accepted(
    client: Client,
) -> None:
    for password in ("exactly8", "𝄞" * 128):
        email = unique_email()
        await client.register(email, password)
        response = await client.http.post(
            "/auth/login", json={"email": email, "password": password}
        )
        assert response.status_code == 200


async def test_login_answers_a_token_and_ignores_the_email_case(client: Client) -> None:
    email = unique_email()
    await client.register(email, "password1")
    response = await client.http.post(
        "/auth/login", json={"email": email.upper(), "password": "password1"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token"] == body["accessToken"] and body["tokenType"] == "Bearer"


async def test_a_wrong_password_and_an_unknown_email_get_the_same_401(client: Client) -> None:
    email = unique_email()
    await client.register(email, "password1")
    wrong = await client.http.post("/auth/login", json={"email": email, "password": "nope"})
    unknown = await client.http.post(
        "/auth/login", json={"email": unique_email(), "password": "password1"}
    )
    for response in (wrong, unknown):
        assert assert_error(response, 401, "/auth/login")["message"] == "Invalid credentials"


async def test_the_eleventh_failed_login_within_the_window_is_429_even_when_right(
    client: Client,
) -> None:
    email = unique_email()
    await client.register(email, "password1")
    for attempt in range(10):
        response = await client.http.post(
            "/auth/login",
            json={"email": email if attempt % 2 else email.upper(), "password": "wrong-one"},
        )
        assert response.status_code == 401
    for password in ("wrong-one", "password1"):
        response = await client.http.post(
            "/auth/login", json={"email": email, "password": password}
        )
        assert_error(response, 429, "/auth/login")
        retry_after = int(response.headers["Retry-After"])
        assert 0 < retry_after <= 15 * 60
    other = unique_email()
    await client.register(other, "password1")
    response = await client.http.post("/auth/login", json={"email": other, "password": "password1"})
    assert response.status_code == 200


async def _registered(client: Client) -> Callable[[str], Awaitable[int]]:
    """A new user's email, as a function that logs in with a password and gives the status."""
    email = unique_email()
    await client.register(email, "password1")

    async def login(password: str) -> int:
        body = {"email": email, "password": password}
        return (await client.http.post("/auth/login", json=body)).status_code

    return login


async def test_attempts_sent_together_check_no_more_passwords_than_the_limit(
    client: Client,
) -> None:
    login = await _registered(client)
    statuses = await asyncio.gather(*(login("wrong-one") for _ in range(25)))
    assert sorted(statuses) == [401] * 10 + [429] * 15


async def test_right_passwords_sent_together_are_all_let_in(client: Client) -> None:
    login = await _registered(client)
    # Checks in flight wait for each other's outcome; only failures count against the email.
    assert await asyncio.gather(*(login("password1") for _ in range(20))) == [200] * 20
    assert [await login("wrong-one") for _ in range(9)] == [401] * 9
    assert await asyncio.gather(*(login("password1") for _ in range(6))) == [200] * 6
    assert await login("wrong-one") == 401  # the tenth failure
    assert await asyncio.gather(*(login("password1") for _ in range(3))) == [429] * 3


async def test_attempts_after_some_failures_check_only_what_the_limit_leaves(
    client: Client,
) -> None:
    login = await _registered(client)
    assert [await login("wrong-one") for _ in range(5)] == [401] * 5
    statuses = await asyncio.gather(*(login("wrong-one") for _ in range(8)))
    assert sorted(statuses) == [401] * 5 + [429] * 3


async def test_successful_and_refused_logins_do_not_count_as_failures(client: Client) -> None:
    login = await _registered(client)
    assert [await login("wrong-one") for _ in range(9)] == [401] * 9
    assert [await login("password1") for _ in range(3)] == [200] * 3
    assert await login("wrong-one") == 401  # the tenth failure
    assert [await login(p) for p in ("password1", "wrong-one", "password1")] == [429] * 3


async def test_failed_logins_for_unknown_emails_are_throttled_too(client: Client) -> None:
    email = unique_email()
    for _ in range(10):
        response = await client.http.post("/auth/login", json={"email": email, "password": "x"})
        assert response.status_code == 401
    response = await client.http.post("/auth/login", json={"email": email, "password": "x"})
    assert_error(response, 429)


async def _failed_at(client: Client, email: str, *ages: float) -> None:
    """Record failed logins of ``email`` made ``ages`` seconds ago, as the api writes them."""
    now = time.time()
    value = " ".join(f"{now - age:.6f}" for age in sorted(ages, reverse=True)).encode()
    await client.backends.kv.set(f"login-failure-times:{email_key(email)}", value, ttl=15 * 60)


async def test_failures_count_within_any_15_minutes_not_a_window_that_resets(
    client: Client,
) -> None:
    # The window opened with the first failure and reset when it ended: 9 failures just before
    # its end and 10 just after were all checked, 19 within a few seconds.
    email = unique_email()
    await client.register(email, "password1")
    body = {"email": email, "password": "wrong-one"}
    await _failed_at(client, email, 898, *[100] * 9)
    response = await client.http.post("/auth/login", json=body)
    assert_error(response, 429, "/auth/login")
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 2  # when the oldest leaves the window
    await asyncio.sleep(retry_after + 0.5)
    # One leaves the window, so one more attempt is checked; the nine stay.
    assert (await client.http.post("/auth/login", json=body)).status_code == 401
    response = await client.http.post("/auth/login", json={**body, "password": "password1"})
    assert_error(response, 429, "/auth/login")
    assert 795 <= int(response.headers["Retry-After"]) <= 800  # the nine, 100 s old


async def test_failures_older_than_15_minutes_do_not_count(client: Client) -> None:
    email = unique_email()
    await client.register(email, "password1")
    await _failed_at(client, email, 901, 950, *[10] * 8)
    body = {"email": email, "password": "password1"}
    assert (await client.http.post("/auth/login", json=body)).status_code == 200
