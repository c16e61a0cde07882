"""Settings from the environment and a .env file: typos and bad values are refused by name."""

import os
from pathlib import Path

import pytest

from cloudtask.settings import Settings, SettingsError, load_settings, unknown_settings

STRONG_SECRET = "s" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CLOUDTASK_ variable or .env file from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("CLOUDTASK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.env"
    path.write_text(text)
    return path


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.database_url.get_secret_value() == (
        "postgresql://cloudtask:cloudtask@localhost:5432/cloudtask"
    )
    assert settings.rabbitmq_url.get_secret_value() == "amqp://guest:guest@localhost:5672/"
    assert settings.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert (settings.jwt_ttl_seconds, settings.worker_concurrency) == (3600, 16)
    assert settings.worker_prefetch is None  # twice the concurrency
    assert settings.http_allowed_hosts == []


def test_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASK_WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("CLOUDTASK_REDIS_URL", "redis://cache:6379/2")
    settings = load_settings()
    assert settings.worker_concurrency == 4
    assert settings.redis_url.get_secret_value() == "redis://cache:6379/2"


def test_variables_are_read_from_a_env_file_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = env_file(tmp_path, "CLOUDTASK_WORKER_CONCURRENCY=4\nCLOUDTASK_JWT_TTL_SECONDS=120\n")
    monkeypatch.setenv("CLOUDTASK_JWT_TTL_SECONDS", "600")
    settings = load_settings(path)
    assert (settings.worker_concurrency, settings.jwt_ttl_seconds) == (4, 600)


def test_the_env_file_in_the_working_directory_is_read_by_default(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CLOUDTASK_WORKER_CONCURRENCY=7\n")
    assert load_settings().worker_concurrency == 7


def test_an_unknown_variable_is_reported_with_a_suggestion_and_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDTASK_JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("CLOUDTASK_WORKER_CONCURENCY", "4")
    assert load_settings().worker_concurrency == 16
    assert unknown_settings() == [
        "ignoring CLOUDTASK_WORKER_CONCURENCY, which is not a setting"
        " (did you mean CLOUDTASK_WORKER_CONCURRENCY?)"
    ]


def test_an_unknown_variable_in_the_env_file_is_reported_with_a_suggestion(
    tmp_path: Path,
) -> None:
    path = env_file(tmp_path, "CLOUDTASK_WORKER_CONCURENCY=4\nCLOUDTASK_JWT_SECRETT=x\n")
    assert load_settings(path).worker_concurrency == 16
    assert unknown_settings(path) == [
        "ignoring CLOUDTASK_WORKER_CONCURENCY, which is not a setting"
        " (did you mean CLOUDTASK_WORKER_CONCURRENCY?)",
        "ignoring CLOUDTASK_JWT_SECRETT, which is not a setting"
        " (did you mean CLOUDTASK_JWT_SECRET?)",
    ]


def test_an_unknown_variable_unlike_any_setting_is_reported_without_a_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDTASK_ZZZ", "1")
    assert unknown_settings() == ["ignoring CLOUDTASK_ZZZ, which is not a setting"]


def test_known_variables_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASK_WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("CLOUDTASKS", "not ours")
    assert unknown_settings() == []


@pytest.mark.parametrize(
    "value",
    [
        "a.example, B.example",
        "a.example,b.example,",
        '["a.example", "B.example"]',
        ' [ "a.example" , "b.example" ] ',
    ],
)
def test_allowed_hosts_accept_a_comma_list_or_a_json_list(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CLOUDTASK_HTTP_ALLOWED_HOSTS", value)
    assert load_settings().http_allowed_hosts == ["a.example", "b.example"]


def test_allowed_hosts_may_be_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASK_HTTP_ALLOWED_HOSTS", "")
    assert load_settings().http_allowed_hosts == []


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # As Compose passes an optional variable: ${CLOUDTASK_WORKER_PREFETCH:-}
    for name in ("WORKER_PREFETCH", "WORKER_CONCURRENCY", "LOG_LEVEL", "SMTP_URL"):
        monkeypatch.setenv(f"CLOUDTASK_{name}", "")
    settings = load_settings()
    assert settings.worker_prefetch is None
    assert settings.worker_concurrency == 16
    assert settings.log_level == "INFO"
    assert settings.smtp_url is None
    monkeypatch.setenv("CLOUDTASK_JWT_SECRET", "")
    with pytest.raises(SettingsError, match="CLOUDTASK_JWT_SECRET"):
        load_settings().require_jwt_secret()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLOUDTASK_WORKER_CONCURRENCY", "0"),
        ("CLOUDTASK_WORKER_CONCURRENCY", "many"),
        ("CLOUDTASK_JWT_TTL_SECONDS", "1.5"),
        ("CLOUDTASK_LOG_LEVEL", "verbose"),
        ("CLOUDTASK_HTTP_ALLOWED_HOSTS", '["a.example"'),
        ("CLOUDTASK_HTTP_ALLOWED_HOSTS", "[1, 2]"),
        ("CLOUDTASK_SMTP_URL", "notaurl"),
        ("CLOUDTASK_SMTP_URL", "http://mail.example"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example:25x"),
        ("CLOUDTASK_SMTP_URL", "smtp://"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example?starttls=1"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example?starttls=yes"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example?starttls=true&starttls=true"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example?start_tls=true"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example?foo=bar"),
        ("CLOUDTASK_SMTP_URL", "smtps://user:s3cret@mail.example?starttls=true"),
        # urlsplit's own message quotes the URL, its password with it.
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@mail.example\u2100:587"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@[v1.x]:25"),
        ("CLOUDTASK_SMTP_URL", "smtp://user:s3cret@a[::1]:25"),
        ("CLOUDTASK_WORKER_LEASE_SECONDS", "inf"),
        ("CLOUDTASK_SCHEDULER_LEASE_SECONDS", "Infinity"),
        ("CLOUDTASK_OUTBOX_RELAY_AFTER_SECONDS", "nan"),
        ("CLOUDTASK_RETRY_BACKOFF_CAP_SECONDS", "1e300"),
        ("CLOUDTASK_RUNNING_GRACE_SECONDS", "1e12"),
        ("CLOUDTASK_MAX_DELIVERIES", "1000000000000"),
        # A sender the mail or SMTP library refuses: every email job failed.
        ("CLOUDTASK_SMTP_FROM", "not an address"),
        ("CLOUDTASK_SMTP_FROM", "a@example.com, b@example.com"),
        ("CLOUDTASK_SMTP_FROM", "Ops: a@example.com;"),
        ("CLOUDTASK_SMTP_FROM", "a@example.com\r\nBcc: s3cret@example.com"),
        ("CLOUDTASK_SMTP_FROM", "x <a b@example.com>"),
        ("CLOUDTASK_SMTP_FROM", "=?utf-8?q?Ops=0A?= <a@example.com>"),
        # Bytes that are not UTF-8, as the environment holds them (a secret from /dev/urandom):
        # a traceback at start, or at the first token.
        ("CLOUDTASK_JWT_SECRET", "\udcff" * 40),
        ("CLOUDTASK_LOG_LEVEL", "\udcff"),
    ],
)
def test_an_invalid_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert "s3cret" not in message
    assert "Value error" not in message  # pydantic's words for a check of ours


@pytest.mark.parametrize(
    "url",
    [
        "smtp://mail.example",
        "smtps://u:p%40ss@mail.example:465",
        "smtp://[::1]:2525",
        "smtp://mail.example:587?starttls=true",
        "smtp://mail.example:587?starttls=TRUE",
        "smtp://mail.example?starttls=false",
        "smtps://mail.example?starttls=false",
    ],
)
def test_an_smtp_url_is_read(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CLOUDTASK_SMTP_URL", url)
    smtp_url = load_settings().smtp_url
    assert smtp_url is not None and smtp_url.get_secret_value() == url


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("CLOUDTASK_DATABASE_URL", "mysql://user:s3cret@db.example/cloudtask"),
        ("CLOUDTASK_DATABASE_URL", "postgresql://user:s3cret@db.example:5432x/cloudtask"),
        ("CLOUDTASK_DATABASE_URL", "postgresql://user:s3cret@db.example:99999/cloudtask"),
        ("CLOUDTASK_DATABASE_URL", "notaurl"),
        ("CLOUDTASK_RABBITMQ_URL", "http://user:s3cret@mq.example/"),
        ("CLOUDTASK_RABBITMQ_URL", "amqp://user:s3cret@mq.example:5672x/"),
        ("CLOUDTASK_RABBITMQ_URL", "amqp://user:s3cret@mq.example:65536/"),
        ("CLOUDTASK_RABBITMQ_URL", "amqp://user:s3cret@[::1/vhost"),
        ("CLOUDTASK_DATABASE_URL", "postgresql://user:s3cret@[::1/cloudtask"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@[::1/0"),
        ("CLOUDTASK_REDIS_URL", "notaurl"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example:6379x/0"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example:65536/0"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/0?ssl_cert_reqs=none"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/0?socket_timeout=soon"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/0?protocol=4"),
        ("CLOUDTASK_REDIS_URL", "rediss://:s3cret@cache.example/0?ssl_cert_reqs=bogus"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/0?retry=x"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example:6379/abc"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/1/2"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/07x"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/-1"),
        ("CLOUDTASK_REDIS_URL", "redis://:s3cret@cache.example/?db=-1"),
    ],
)
def test_a_connection_url_its_library_cannot_read_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    monkeypatch.setenv(name, url)
    settings = load_settings()  # read: `cloudtask dev` uses none of them
    field = name.removeprefix("CLOUDTASK_").lower()
    with pytest.raises(SettingsError) as caught:
        settings.require_urls(field)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert "s3cret" not in message
    assert "Value error" not in message  # pydantic's words for a check of ours


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("CLOUDTASK_DATABASE_URL", "postgres://u:p%40ss@db.example:5433/cloudtask"),
        ("CLOUDTASK_DATABASE_URL", "postgresql+asyncpg://db.example/cloudtask"),
        ("CLOUDTASK_DATABASE_URL", "postgresql:///cloudtask?host=/var/run/postgresql"),
        ("CLOUDTASK_RABBITMQ_URL", "amqps://u:p@mq.example:5671/jobs"),
        ("CLOUDTASK_RABBITMQ_URL", "amqp://mq.example"),
        ("CLOUDTASK_REDIS_URL", "rediss://:p@cache.example:6380/2"),
        ("CLOUDTASK_REDIS_URL", "rediss://cache.example/0?ssl_cert_reqs=none&socket_timeout=5"),
        ("CLOUDTASK_REDIS_URL", "unix:///run/redis.sock?db=1"),
        ("CLOUDTASK_REDIS_URL", "REDIS://cache.example:6379/0"),  # as the client reads it
        ("CLOUDTASK_REDIS_URL", "redis://user:p@cache.example/0"),
        ("CLOUDTASK_REDIS_URL", "redis://cache.example/"),
        ("CLOUDTASK_REDIS_URL", "redis://cache.example/15?db=15"),
        ("CLOUDTASK_RABBITMQ_URL", "AMQP://mq.example/%2F"),
    ],
)
def test_a_connection_url_of_any_supported_form_is_read(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    monkeypatch.setenv(name, url)
    field = name.removeprefix("CLOUDTASK_").lower()
    settings = load_settings()
    settings.require_urls(field)  # type: ignore[arg-type]
    assert getattr(settings, field).get_secret_value() == url


def test_an_invalid_value_in_the_env_file_is_refused_naming_the_variable(tmp_path: Path) -> None:
    path = env_file(tmp_path, "CLOUDTASK_DB_POOL_SIZE=-1\n")
    with pytest.raises(SettingsError, match=r"^CLOUDTASK_DB_POOL_SIZE: "):
        load_settings(path)


@pytest.mark.parametrize(
    "sender",
    ["jobs@example.com", '"Ops, Team" <ops@example.com>', "Jos\u00e9 <jose@example.com>",
     "=?utf-8?q?Caf=C3=A9?= <cafe@example.com>"],
)  # fmt: skip
def test_a_sender_of_one_address_is_read(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    monkeypatch.setenv("CLOUDTASK_SMTP_FROM", sender)
    assert load_settings().smtp_from == sender


def test_a_variable_of_another_program_that_is_not_utf8_stops_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDTASK_OTHER_TOOL_TOKEN", "\udcff")
    assert load_settings(env_file=None).log_level == "INFO"


def test_an_env_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"CLOUDTASK_LOG_LEVEL=\xff\n")
    with pytest.raises(SettingsError, match=r"\.env: is not UTF-8 text$"):
        load_settings(path)


@pytest.mark.parametrize("secret", [None, "", "short", "x" * 31, "é" * 15])
def test_a_weak_jwt_secret_is_refused_in_one_line_naming_the_variable(
    secret: str | None,
) -> None:
    settings = load_settings(env_file=None, jwt_secret=secret)
    with pytest.raises(SettingsError) as caught:
        settings.require_jwt_secret()
    message = str(caught.value)
    assert "CLOUDTASK_JWT_SECRET" in message
    assert "\n" not in message
    if secret:
        assert secret not in message


@pytest.mark.parametrize("secret", ["x" * 32, "é" * 16, "x" * 200])
def test_a_jwt_secret_of_32_bytes_or_more_is_accepted(secret: str) -> None:
    load_settings(env_file=None, jwt_secret=secret).require_jwt_secret()


def test_the_jwt_secret_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASK_JWT_SECRET", STRONG_SECRET)
    settings: Settings = load_settings()
    settings.require_jwt_secret()
    assert STRONG_SECRET not in repr(settings)
