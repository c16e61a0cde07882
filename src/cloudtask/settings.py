"""CloudTask's settings: environment variables prefixed ``CLOUDTASK_``, or a ``.env`` file.

A ``CLOUDTASK_`` variable that names no setting is reported in one line (a misspelling, with the
setting it resembles) and otherwise ignored, as other programs' variables that share the prefix
must not stop a service; an invalid value or a weak JWT secret stops it at start.
:func:`load_settings` is the one place settings are read.
"""

import difflib
import json
import os
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url as parse_redis_url
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cloudtask.contracts.job_types import EMAIL_ADDRESS, MAX_RESULT_BYTES
from cloudtask.contracts.mail_text import is_one_line
from cloudtask.contracts.urls import allowed_host, check_host_and_port
from cloudtask.db.engine import async_url
from cloudtask.errors import CloudTaskError

ENV_PREFIX = "CLOUDTASK_"
MIN_JWT_SECRET_BYTES = 32
# The most any duration setting may be: longer ones overflow the clocks and stores they reach
# (a Redis expiry, a date), so they would stop a service at its first use rather than at start.
LONGEST = 366 * 24 * 3600.0


class SettingsError(Exception):
    """The settings are invalid; the message is one line that names the variable to fix."""


class Settings(BaseSettings):
    # An empty variable counts as unset, as Compose passes an optional one (``${NAME:-}``).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    database_url: SecretStr = SecretStr("postgresql://cloudtask:cloudtask@localhost:5432/cloudtask")
    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    jwt_secret: SecretStr | None = None
    jwt_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 3600
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16)] = 12
    smtp_url: SecretStr | None = None
    smtp_from: str = "CloudTask <cloudtask@localhost>"
    smtp_timeout_seconds: Annotated[float, Field(gt=0, le=LONGEST)] = 30
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    http_timeout_seconds: Annotated[float, Field(gt=0, le=LONGEST)] = 30
    # Above MAX_RESULT_BYTES, the http handler uses that: a larger body could never be a job's
    # result. (Not refused: an older version took such values, and every service would stop.)
    http_max_response_bytes: Annotated[int, Field(gt=0)] = MAX_RESULT_BYTES
    worker_concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    # Deliveries a worker holds unacknowledged; None: twice the concurrency.
    worker_prefetch: Annotated[int, Field(ge=1, le=65535)] | None = None
    worker_grace_seconds: Annotated[float, Field(ge=0, le=LONGEST)] = 30
    worker_lease_seconds: Annotated[float, Field(ge=3, le=LONGEST)] = 15
    max_deliveries: Annotated[int, Field(ge=1, le=1000)] = 5
    retry_backoff_base_seconds: Annotated[float, Field(gt=0, le=LONGEST)] = 2
    retry_backoff_cap_seconds: Annotated[float, Field(gt=0, le=LONGEST)] = 3600
    running_grace_seconds: Annotated[float, Field(ge=0, le=LONGEST)] = 30
    scheduler_lease_seconds: Annotated[float, Field(ge=2, le=LONGEST)] = 10
    scheduler_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    outbox_relay_after_seconds: Annotated[float, Field(ge=0, le=LONGEST)] = 5
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            # Either a JSON list (as pydantic-settings reads lists) or "a, b", whose first entry
            # may be an IPv6 address in brackets ("[::1]:8000, b").
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else text.split(",")
            except json.JSONDecodeError:
                value = text.split(",")
        if isinstance(value, list):
            hosts = [h.strip().lower() if isinstance(h, str) else h for h in value]
            hosts = [host for host in hosts if host != ""]
            for host in hosts:
                if isinstance(host, str):
                    allowed_host(host)  # ValueError: the entry is named in the one-line error
            return hosts
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked at start: a mistyped URL would otherwise fail every email job. The message
        # never repeats the URL, which may hold a password.
        if value is None:
            return None
        url = value.get_secret_value()
        try:
            parts = urlsplit(url)
        except ValueError:  # its message quotes the URL
            parts = urlsplit("")
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("must be smtp://[user:password@]host[:port] or smtps://…")
        check_host_and_port(url)
        # A misspelt option must not quietly send in clear what was meant to be encrypted.
        options = parse_qs(parts.query, keep_blank_values=True)
        starttls = options.pop("starttls", ["false"])
        if options or len(starttls) != 1 or starttls[0].lower() not in ("true", "false"):
            raise ValueError("takes one option, ?starttls=true (or false)")
        if parts.scheme == "smtps" and starttls[0].lower() == "true":
            raise ValueError("smtps:// is encrypted from the start: ?starttls=true is for smtp://")
        return value

    @field_validator("smtp_from")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        # Checked at start: the mail and SMTP libraries refuse any other at every email job.
        message = EmailMessage()
        try:
            message["From"] = value
            groups = message["From"].groups
        except (ValueError, IndexError):  # a line break; what the parser cannot read at all
            groups = ()
        if not (
            len(groups) == 1
            and groups[0].display_name is None  # a group (Ops: a@x;) is no sender
            and len(groups[0].addresses) == 1
            and re.fullmatch(EMAIL_ADDRESS, groups[0].addresses[0].addr_spec)
            and is_one_line(str(message["From"]))
        ):
            raise ValueError(
                "must be one address, such as jobs@example.com or 'CloudTask <jobs@example.com>'"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def require_urls(self, *names: Literal["database_url", "rabbitmq_url", "redis_url"]) -> None:
        """Refuse a connection URL the command uses that its library cannot read (a scheme, a
        port), in one line naming the variable: it otherwise failed at first use, with a
        traceback (or retried an http:// RabbitMQ URL for ever). Only those of the command
        (``cloudtask dev`` reads none of them). Messages never repeat a URL (its password)."""
        for name in names:
            url = getattr(self, name).get_secret_value()
            problem = _URL_CHECKS[name](url)
            if problem is not None:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {problem}")

    def require_jwt_secret(self) -> None:
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise SettingsError(
                f"{ENV_PREFIX}JWT_SECRET must be set to at least {MIN_JWT_SECRET_BYTES} bytes "
                "(for example: export CLOUDTASK_JWT_SECRET=$(openssl rand -hex 32))"
            )


def _database_url_problem(url: str) -> str | None:
    try:
        port = make_url(async_url(url)).port
    except (CloudTaskError, ArgumentError, ValueError):
        port = -1
    if port is not None and not 0 <= port <= 65535:
        return "must be postgresql://user:password@host[:port]/database, the port 0 to 65535"
    return None


def _rabbitmq_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed bracket, a host that changes under NFKC normalization
        return "is not a URL: use amqp://user:password@host[:port]/[vhost] or amqps://…"
    if parts.scheme.lower() not in ("amqp", "amqps"):
        return "must be amqp://user:password@host[:port]/[vhost] or amqps://…"
    try:
        parts.port  # noqa: B018 - parsed on access
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    return None


def _redis_url_problem(url: str) -> str | None:
    try:
        options = parse_redis_url(url)  # the parser of the asyncio client the services build
    except ValueError:
        return (
            "must be redis://[user:password@]host[:port][/db], rediss://… or unix://…, "
            "the port 0 to 65535"
        )
    parts = urlsplit(url)
    path = parts.path.strip("/") if parts.scheme.lower() in ("redis", "rediss") else ""
    # The client reads "/abc" as database 0 and "/1/2" as 12: another program's data, maybe.
    if (path and not (path.isascii() and path.isdigit())) or options.get("db", 0) < 0:
        return "has a database that is not a whole number: redis://host[:port]/<database>"
    try:  # its query's options, as a connection takes them (none is opened here)
        Redis.from_url(url).connection_pool.make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError, AttributeError, RedisError):
        return (
            "has a query option the Redis client does not take, or a value it cannot use "
            "(TLS options need rediss://)"
        )
    return None


_URL_CHECKS: dict[str, Callable[[str], str | None]] = {
    "database_url": _database_url_problem,
    "rabbitmq_url": _rabbitmq_url_problem,
    "redis_url": _redis_url_problem,
}


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read the settings, refusing invalid values."""
    names = _setting_names()
    for name, value in os.environ.items():
        # Only settings: another program's variable that shares the prefix stops nothing.
        if name.upper() in names and not _is_text(value):
            # Bytes that are not UTF-8 (a secret from /dev/urandom): every library that takes
            # the value as text fails on it, at start or at first use, with a traceback.
            raise SettingsError(f"{name}: is not UTF-8 text (for a secret: openssl rand -hex 32)")
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "settings"
        raise SettingsError(f"{name}: {error['msg'].removeprefix('Value error, ')}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{env_file}: is not UTF-8 text") from None


def _setting_names() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def _is_text(value: str) -> bool:
    # The environment's bytes as Python reads them: those that are not UTF-8 as surrogates.
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def unknown_settings(env_file: str | Path | None = ".env") -> list[str]:
    """One line for each ``CLOUDTASK_`` variable (of the environment or ``env_file``) that names
    no setting, with the setting it most resembles."""
    known = _setting_names()
    file_values = dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
    lines = []
    for name in dict.fromkeys([*os.environ, *file_values]):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            # Compared without the prefix, which every name shares and would make anything match.
            fields = [known_name.removeprefix(ENV_PREFIX) for known_name in known]
            hint = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), fields, n=1)
            suggestion = f" (did you mean {ENV_PREFIX}{hint[0]}?)" if hint else ""
            lines.append(f"ignoring {name}, which is not a setting{suggestion}")
    return lines
