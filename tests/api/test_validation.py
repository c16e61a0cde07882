"""Each bad-input rule of the contract: its 4xx, the error body, and nothing changed."""

from typing import Any

import pytest

from tests.helpers import Client, assert_error

BAD_JOBS: list[tuple[dict[str, Any], str]] = [
    ({}, "type"),
    ({"type": ""}, "type"),
    ({"type": "x" * 65}, "type"),
    ({"type": "Upper"}, "type"),
    ({"type": "has space"}, "type"),
    ({"type": 5}, "type"),
    ({"type": "echo", "payload": "x" * (256 * 1024)}, "payload"),
    ({"type": "echo", "priority": -1}, "priority"),
    ({"type": "echo", "priority": 10}, "priority"),
    ({"type": "echo", "priority": "5"}, "priority"),
    ({"type": "echo", "priority": 5.5}, "priority"),
    ({"type": "echo", "priority": True}, "priority"),
    ({"type": "echo", "priority": None}, "priority"),
    ({"type": "echo", "runAt": "tomorrow"}, "runAt"),
    ({"type": "echo", "runAt": "2030-01-01T00:00:00"}, "runAt"),
    ({"type": "echo", "runAt": 1893456000}, "runAt"),
    ({"type": "echo", "runAt": "2030-02-30T00:00:00Z"}, "runAt"),
    ({"type": "echo", "delaySeconds": -1}, "delaySeconds"),
    ({"type": "echo", "delaySeconds": "3"}, "delaySeconds"),
    ({"type": "echo", "delaySeconds": 1e300}, "delaySeconds"),
    ({"type": "echo", "delaySeconds": 5, "runAt": "2030-01-01T00:00:00Z"}, "delaySeconds"),
    ({"type": "echo", "maxAttempts": 0}, "maxAttempts"),
    ({"type": "echo", "maxAttempts": 21}, "maxAttempts"),
    ({"type": "echo", "maxAttempts": 2.5}, "maxAttempts"),
    ({"type": "echo", "timeoutSeconds": 0.5}, "timeoutSeconds"),
    ({"type": "echo", "timeoutSeconds": 3601}, "timeoutSeconds"),
    ({"type": "echo", "timeoutSeconds": "60"}, "timeoutSeconds"),
    ({"type": "sleep", "payload": {"seconds": 0}}, "payload.seconds"),
    ({"type": "sleep", "payload": {"seconds": 301}}, "payload.seconds"),
    ({"type": "sleep", "payload": {"seconds": "1"}}, "payload.seconds"),
    ({"type": "sleep", "payload": None}, "payload"),
    ({"type": "email", "payload": {"to": "someone@example.com"}}, "payload.subject"),
    ({"type": "email", "payload": {"to": "a@example.com", "subject": "Hi\r\nBcc: b@example.com"}},
     "payload.subject"),
    ({"type": "email", "payload": {"to": "a@example.com", "subject": "two\nlines"}},
     "payload.subject"),
    # A line break in a MIME encoded word, which the mail library decodes as it writes the
    # subject: it wrote the header Bcc: evil@example.com, and the body, of the job's choosing.
    *[({"type": "email", "payload": {"to": "a@example.com", "subject": subject}},
       "payload.subject")
      for subject in ("=?utf-8?b?eA0KQmNjOiBldmlsQGV4YW1wbGUuY29tDQoNCmJvZHk=?=",
                      "Hi =?utf-8?q?x=0D=0ABcc:_evil@example.com?=", "=?utf-8?q?a=E2=80=A8b?=",
                      # At the end (a regex's $ lets a last line feed through); no charset.
                      "=?utf-8?q?Invoice=0A?=", "=?utf-8?b?SW52b2ljZQo=?=", "=??q?a=0Ab?=",
                      "=?utf-8*en?Q?a=0Db?=", "=?bogus?q?a=0Ab?=",
                      # Spaces and odd charsets inside the word: the mail library reads on to ?=.
                      "=?utf-8?q?=0ABcc: x@evil.com ?=", "=?utf-8?q?x\t=0A?=",
                      "=?utf\u00a0?q?=0ABcc:_a@b.c?=", "=?\u3000?b?CkJjYzogYUBiLmM=?=")],
    # Where else the mail library breaks a header's line (str.splitlines): every attempt failed.
    *[({"type": "email", "payload": {"to": "a@example.com", "subject": f"two{brk}lines"}},
       "payload.subject") for brk in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"],
    # Other control characters, which the mail library wrote into the header as they were, and
    # encoded words holding one, or another encoded word: written as it is, a line break in it
    # reached the recipient's mail reader.
    *[({"type": "email", "payload": {"to": "a@example.com", "subject": subject}},
       "payload.subject")
      for subject in ("a\x00b", "a\x1bb", "a\x7fb", "a\x9bb", "=?utf-8?q?a=00b?=",
                      "=?utf-8?q?=3D=3Futf-8=3Fq=3Fa=3D0Ab=3F=3D?=",
                      # Two words the mail library joins into one that decodes to another.
                      "=?utf-8?q?=3D=3Futf-8=3Fq=3Fa?= =?utf-8?q?=3D0Ab=3F=3D?=",
                      "=?utf-8?q?=3D=3F?=utf-8?q?a=0Ab?=",
                      # A word the library decodes to the end of the header, never closed.
                      "=?utf-8?q?=1B[31m", "Hello =?utf-8?q?=0D=0ABcc:_x@evil.com",
                      # Words it reads with defects, whose bytes the header gets otherwise.
                      "=??Q?=C2=85x?=", "=?utf-8?q?=FF?=", "=?bogus?q?a?=",
                      "=?" + "x" * 900 + "?q?a?=")],
    # One address, not a list or a group: a comma once sent one job's mail to three recipients.
    *[({"type": "email", "payload": {"to": to, "subject": "Hi"}}, "payload.to")
      for to in ("postmaster,root,x@example.com", "a:b@example.com;", "Ada <a@example.com>",
                 '"a b"@example.com', "a@example.com; b@example.com",
                 # An empty part between dots: the mail library read these as no address (<>).
                 "a@example.com.", "a@example..com", "a@.example.com",
                 # A MIME encoded word, which the mail library decodes to another address.
                 "=?utf-8?q?evil=40evil.com?=.@example.com", "x@=?utf-8?q?evil.com?=",
                 # Spaces beyond ASCII, which the SMTP client refused at every attempt.
                 *(f"bob{space}x@example.com" for space in "\u00a0\u1680\u2003\u202f\u3000"),
                 "bob@exa\u205fmple.com")],
    ({"type": "http", "payload": {"url": "ftp://example.com"}}, "payload.url"),
    ({"type": "http", "payload": {"url": "http://127.0.0.1:18099.evil.com/"}}, "payload.url"),
    ({"type": "http", "payload": {"url": "http://example.com:65536/"}}, "payload.url"),
    ({"type": "http", "payload": {"url": "http:///path"}}, "payload.url"),
    ({"type": "http", "payload": {"url": "https://:80/"}}, "payload.url"),
    # Text between an IPv6 address and its port, which urlsplit skips and the HTTP client refuses
    # (the job failed three times as a connection error).
    *[({"type": "http", "payload": {"url": url}}, "payload.url")
      for url in ("http://[::1]x:80/", "http://[::1]evil.example:80/", "http://[::1]]:80/",
                  "http://user@[::1]x/", "http://a[::1]:80/", "http://u@x.com[::1]:80/",
                  "http://[v1.x]/")],
    ({"type": "http", "payload": {"url": "http://example.com/a\r\nHost: b"}}, "payload.url"),
    ({"type": "http", "payload": {"url": "http://x", "headers": {"X-A": "a\r\nX-B: b"}}},
     "payload.headers.X-A"),
    ({"type": "http", "payload": {"url": "http://x", "headers": {"X-A": "caf\u00e9"}}},
     "payload.headers.X-A"),
    ({"type": "http", "payload": {"url": "http://x", "headers": {"Bad Name": "v"}}},
     "payload.headers.Bad Name"),
    ({"type": "http", "payload": {"url": "http://x", "headers": {"": "v"}}}, "payload.headers."),
    ({"type": "echo", "runAt": "2030-01-01 00:00:00Z"}, "runAt"),
    ({"type": "echo", "runAt": "2030-06-15T12:34:60Z"}, "runAt"),
    ({"type": "echo", "runAt": "2030-01-01T00:00:00Z\n"}, "runAt"),
    ({"type": "http", "payload": {"url": "http://x", "headers": {"X-A": 1}}},
     "payload.headers.X-A"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_JOBS)
async def test_a_job_body_that_breaks_a_rule_is_400_naming_the_field(
    client: Client, body: dict[str, Any], field: str
) -> None:
    token = await client.register()
    response = await client.http.post("/jobs", json=body, headers=client.auth(token))
    error = assert_error(response, 400, "/jobs")
    assert field in [detail["field"] for detail in error["details"]], error
    assert (await client.http.get("/jobs", headers=client.auth(token))).json() == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/jobs", {"type": "sleep", "payload": None}, "payload"),
     ("/jobs", {"type": "email", "payload": [1]}, "payload"),
     ("/jobs/batch", {"jobs": [5]}, "jobs[0]"),
     ("/schedules", {"name": "n", "cron": "* * * * *", "type": "http", "payload": "x"}, "payload")],
)  # fmt: skip
async def test_a_value_that_should_be_an_object_is_told_so_in_jsons_words(
    client: Client, path: str, body: dict[str, Any], field: str
) -> None:
    token = await client.register()
    error = assert_error(await client.http.post(path, json=body, headers=client.auth(token)), 400)
    assert {
        "field": field,
        "location": "body",
        "message": "Input should be a JSON object",
    } in error["details"], error


async def test_good_edge_values_are_accepted(client: Client) -> None:
    token = await client.register()
    for body in (
        {"type": "a", "priority": 0, "maxAttempts": 1, "timeoutSeconds": 1},
        {"type": "x" * 64, "priority": 9, "maxAttempts": 20, "timeoutSeconds": 3600},
        {"type": "my.job_type-2", "delaySeconds": 0},
        {"type": "sleep", "payload": {"seconds": 300}},
        {"type": "sleep", "payload": {"seconds": 0.01}},
        {"type": "echo", "payload": "x" * (256 * 1024 - 2)},
        {"type": "echo", "priority": 7.0, "maxAttempts": 2.0},
        {"type": "echo", "runAt": "2016-12-31T23:59:60Z"},
        {
            "type": "email",
            "payload": {"to": "a@example.com", "subject": "Caf\u00e9\tr\u00e9sum\u00e9"},
        },
        {
            "type": "email",
            "payload": {"to": "j\u00f6ran@ex\u00e4mple.com", "subject": "=?utf-8?q?Caf=C3=A9?="},
        },
        # Subjects mail programs write: words joined by a tab, base64 without its padding or
        # with more, charsets of other names, a language.
        *(
            {"type": "email", "payload": {"to": "a@example.com", "subject": subject}}
            for subject in (
                "Re: =?ISO-8859-1?Q?Andr=E9?=\t=?utf-8?b?w6k=?=",
                "=?UTF-8?B?UsOpdW5pb24?=",
                "=?utf-8?b?SGVsbG8==?=",
                "=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
                "=?windows-1252?q?=93quoted=94?=",
                "=?utf-8*en?q?hello?=",
            )
        ),
        {"type": "http", "payload": {"url": "http://[::1]:8080/", "method": "POST"}},
        {
            "type": "http",
            "payload": {
                "url": "https://example.com/caf\u00e9?q=a b",
                "headers": {"X-Trace_id.1": "a b\t~"},
            },
        },
    ):
        response = await client.http.post("/jobs", json=body, headers=client.auth(token))
        assert response.status_code == 201, (body, response.text)


async def test_fields_are_read_by_their_camel_case_names_only(client: Client) -> None:
    # A snake_case key is an unknown field like any other: ignored, not a second spelling.
    token = await client.register()
    snake = {"max_attempts": 50, "delay_seconds": 60, "timeout_seconds": 7, "run_at": "x"}
    job = (
        await client.http.post("/jobs", json={"type": "echo", **snake}, headers=client.auth(token))
    ).json()
    assert (job["status"], job["maxAttempts"], job["timeoutSeconds"]) == ("PENDING", 3, 300)
    batch = await client.http.post(
        "/jobs/batch", json={"jobs": [{"type": "echo", **snake}]}, headers=client.auth(token)
    )
    assert batch.status_code == 201, batch.text
    assert (batch.json()[0]["maxAttempts"], batch.json()[0]["status"]) == (3, "PENDING")
    schedule = await client.http.post(
        "/schedules",
        json={"name": "n", "cron": "* * * * *", "type": "echo", **snake},
        headers=client.auth(token),
    )
    assert schedule.status_code == 201, schedule.text
    assert (schedule.json()["maxAttempts"], schedule.json()["timeoutSeconds"]) == (3, 300)


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"type": "echo",}', b"NaN", b'{"type": "echo", "payload": NaN}',
     b'{"type": "echo", "payload": Infinity}', b'{"type": "echo"} extra', b"\xff\xfe",
     b"[]", b'"echo"', b""],
)  # fmt: skip
async def test_malformed_json_is_400(client: Client, raw: bytes) -> None:
    token = await client.register()
    response = await client.http.post(
        "/jobs", content=raw, headers={**client.auth(token), "Content-Type": "application/json"}
    )
    assert assert_error(response, 400, "/jobs")["details"]


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "Application/JSON; charset=utf-8", "application/problem+json"],
)
async def test_a_body_declared_as_json_or_undeclared_is_read_as_json(
    client: Client, content_type: str | None
) -> None:
    token = await client.register()
    headers = client.auth(token) | ({"Content-Type": content_type} if content_type else {})
    response = await client.http.post("/jobs", content=b'{"type": "echo"}', headers=headers)
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("path", "body"),
    [("/jobs", b'{"type": "echo"}'), ("/jobs/batch", b'{"jobs": [{"type": "echo"}]}'),
     ("/schedules", b'{"name": "n", "cron": "* * * * *", "type": "echo"}'),
     ("/auth/login", b'{"email": "a@example.com", "password": "password1"}')],
)  # fmt: skip
@pytest.mark.parametrize(
    "content_types",
    [("text/plain",), ("application/x-www-form-urlencoded",),
     # Sent twice, the body is read by neither, whichever comes first.
     ("application/json", "text/plain"), ("text/plain", "application/json")],
)  # fmt: skip
async def test_a_body_declared_as_something_else_is_400_naming_the_header(
    client: Client, path: str, body: bytes, content_types: tuple[str, ...]
) -> None:
    token = await client.register()
    headers = [*client.auth(token).items(), *(("Content-Type", t) for t in content_types)]
    response = await client.http.post(path, content=body, headers=headers)
    details = assert_error(response, 400, path)["details"]
    assert details == [
        {"field": "Content-Type", "location": "header", "message": "must be application/json"}
    ]
    listed = await client.http.get("/jobs", headers=client.auth(token))
    assert listed.json() == []


async def test_a_request_without_a_body_is_not_judged_by_its_content_type(client: Client) -> None:
    token = await client.register()
    job = (await client.http.post("/jobs", json={"type": "echo", "delaySeconds": 60},
                                  headers=client.auth(token))).json()  # fmt: skip
    response = await client.http.post(
        f"/jobs/{job['id']}/cancel", headers={**client.auth(token), "Content-Type": "text/plain"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content_type", "body", "first"),
    [("application/json", b'{"type": "echo",', "body"),
     ("text/plain", b'{"type": "echo"}', "Content-Type")],
)  # fmt: skip
async def test_a_body_that_cannot_be_read_is_400_naming_the_bad_headers_too(
    client: Client, content_type: str, body: bytes, first: str
) -> None:
    token = await client.register()
    for key in ("", "k" * 256):
        headers = {**client.auth(token), "Content-Type": content_type, "Idempotency-Key": key}
        response = await client.http.post("/jobs", content=body, headers=headers)
        details = assert_error(response, 400, "/jobs")["details"]
        assert [d["field"] for d in details] == [first, "Idempotency-Key"]


async def test_a_body_over_one_mebibyte_is_413(client: Client) -> None:
    token = await client.register()
    body = b'{"type": "echo", "payload": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.http.post(
        "/jobs", content=body, headers={**client.auth(token), "Content-Type": "application/json"}
    )
    assert_error(response, 413, "/jobs")

    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * (64 * 1024)

    streamed = await client.http.post("/jobs", content=chunks(), headers=client.auth(token))
    assert_error(streamed, 413, "/jobs")
    assert (await client.http.get("/jobs", headers=client.auth(token))).json() == []


@pytest.mark.parametrize(
    ("params", "name"),
    [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"limit": "ten"}, "limit"),
     ({"limit": "5.0"}, "limit"), ({"limit": "+5"}, "limit"), ({"limit": " 5"}, "limit"),
     ({"limit": "1_0"}, "limit"), ({"limit": "\u0665"}, "limit"), ({"limit": ""}, "limit"),
     ({"status": "DONE"}, "status"), ({"type": "Bad Type"}, "type"),
     ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "v2.abc.1"}, "cursor"),
     ({"cursor": "v2.1." + "9" * 19}, "cursor"), ({"cursor": "v2." + "9" * 18 + ".1"}, "cursor"),
     ({"cursor": "v2.253402300800000000.1"}, "cursor"), ({"cursor": "v1.5"}, "cursor")],
)  # fmt: skip
async def test_a_bad_query_parameter_is_400_naming_it(
    client: Client, params: dict[str, Any], name: str
) -> None:
    token = await client.register()
    response = await client.http.get("/jobs", params=params, headers=client.auth(token))
    error = assert_error(response, 400, "/jobs")
    assert [(d["field"], d["location"]) for d in error["details"]] == [(name, "query")]


@pytest.mark.parametrize(
    ("query", "names"),
    [("limit=abc&limit=1", ["limit"]), ("limit=1&limit=1", ["limit"]),
     ("status=FOO&status=PENDING", ["status"]), ("type=a&limit=2&type=a&status=PENDING", ["type"]),
     ("limit=1&type=a&limit=2&type=b", ["type", "limit"]),
     # Beside a parameter that fails its rule: each named once.
     ("status=PENDING&status=COMPLETED&limit=x", ["limit", "status"]),
     ("limit=1&limit=abc", ["limit"])],
)  # fmt: skip
async def test_a_query_parameter_sent_twice_is_400_naming_it(
    client: Client, query: str, names: list[str]
) -> None:
    # Which one would count is anyone's guess: a bad one must not pass beside a good one.
    token = await client.register()
    response = await client.http.get(f"/jobs?{query}", headers=client.auth(token))
    error = assert_error(response, 400, "/jobs")
    assert [(d["field"], d["location"]) for d in error["details"]] == [(n, "query") for n in names]
    # A parameter the route does not define is ignored, repeated or not.
    ignored = await client.http.get("/jobs?x=1&x=2&limit=1", headers=client.auth(token))
    assert ignored.status_code == 200


async def test_a_400_with_more_bad_parameters_than_its_message_names_says_how_many_more(
    client: Client,
) -> None:
    token = await client.register()
    params = {"limit": "0", "status": "X", "type": "Y Z", "cursor": "nope"}
    response = await client.http.get("/jobs", params=params, headers=client.auth(token))
    error = assert_error(response, 400, "/jobs")
    assert {d["field"] for d in error["details"]} == set(params)
    assert error["message"].endswith("; and 1 more (see details)"), error["message"]


async def test_a_repeated_idempotency_key_header_is_400_and_stores_nothing(
    client: Client,
) -> None:
    token = await client.register()
    headers = [*client.auth(token).items(), ("Idempotency-Key", "k-a"), ("Idempotency-Key", "k-b")]
    for path, body in (("/jobs", {"type": "echo"}), ("/jobs/batch", {"jobs": [{"type": "echo"}]})):
        response = await client.http.post(path, json=body, headers=headers)
        error = assert_error(response, 400, path)
        assert [(d["field"], d["location"]) for d in error["details"]] == [
            ("Idempotency-Key", "header")
        ]
    assert (await client.http.get("/jobs", headers=client.auth(token))).json() == []
    for key in ("k-a", "k-b"):  # neither key was taken
        once = {**client.auth(token), "Idempotency-Key": key}
        response = await client.http.post("/jobs", json={"type": "echo"}, headers=once)
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response.headers


@pytest.mark.parametrize(
    "key",
    ["", " \t ", "k" * 256, "k" * 255 + " x", "\u00e9".encode() * 256, b"\xe9" * 256],
    ids=["empty", "blank", "256", "255-then-more", "256-two-byte-characters", "256-latin-1-bytes"],
)
async def test_an_idempotency_key_outside_1_to_255_characters_is_400(
    client: Client, key: str | bytes
) -> None:
    token = await client.register()
    response = await client.http.post(
        "/jobs", json={"type": "echo"}, headers={**client.auth(token), "Idempotency-Key": key}
    )
    error = assert_error(response, 400, "/jobs")
    assert [(d["field"], d["location"]) for d in error["details"]] == [
        ("Idempotency-Key", "header")
    ]


async def test_unknown_paths_and_methods_get_the_error_body(client: Client) -> None:
    assert_error(await client.http.get("/nowhere"), 404, "/nowhere")
    assert_error(await client.http.get("/jobs/"), 404, "/jobs/")
    not_allowed = await client.http.delete("/jobs")
    assert_error(not_allowed, 405, "/jobs")
    assert "GET" in not_allowed.headers["Allow"]
    assert_error(await client.http.get("/auth/login"), 405, "/auth/login")
    # Routes the OpenAPI document leaves out (itself, the docs pages): their Allow was empty.
    for path in ("/openapi.json", "/docs", "/redoc"):
        response = await client.http.post(path)
        assert_error(response, 405, path)
        assert response.headers["Allow"] == "GET, HEAD"


MIXED_STAGES: list[tuple[str, dict[str, Any], list[str]]] = [
    # A field its model refuses, and a payload or cron checked after the model.
    ("/jobs", {"type": "sleep", "payload": {"seconds": 0}, "priority": 99},
     ["priority", "payload.seconds"]),
    ("/jobs/batch", {"jobs": [{"type": "echo"}, {"type": "sleep", "payload": {"seconds": 0}},
                              {"type": "BAD"}]},
     ["jobs[2].type", "jobs[1].payload.seconds"]),
    ("/schedules", {"name": "", "cron": "bad", "type": "echo"}, ["name", "cron"]),
    ("/schedules", {"name": "n", "cron": "* * * * *", "timezone": "X/Y", "type": "BAD"},
     ["type", "timezone"]),
    ("/schedules", {"name": "n", "cron": 5, "type": "sleep", "payload": {"seconds": 0}},
     ["cron", "payload.seconds"]),
    # A payload the model refused is named once, not again by the payload's own checks.
    ("/jobs", {"type": "sleep", "payload": {"seconds": "x" * (256 * 1024)}}, ["payload"]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "fields"), MIXED_STAGES)
async def test_one_400_names_every_bad_field_whichever_check_finds_it(
    client: Client, path: str, body: dict[str, Any], fields: list[str]
) -> None:
    token = await client.register()
    response = await client.http.post(path, json=body, headers=client.auth(token))
    error = assert_error(response, 400, path)
    assert [detail["field"] for detail in error["details"]] == fields, error


async def test_a_cursor_at_the_edge_of_its_range_is_read(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token)
    for cursor, listed in (("v2.253402300799999999.1", [job["id"]]), ("v2.0.0", [])):
        response = await client.http.get(
            "/jobs", params={"cursor": cursor}, headers=client.auth(token)
        )
        assert response.status_code == 200, response.text
        assert [j["id"] for j in response.json()] == listed
