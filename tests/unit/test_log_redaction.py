"""What the services log goes through one redacting filter: the message, the exception and the
fields given beside them."""

import io
import logging

import pytest

from cloudtask.log import ConsoleFormatter, JSONFormatter, RedactingFilter, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize("formatter", [JSONFormatter("worker"), ConsoleFormatter("worker")])
def test_no_password_or_token_reaches_a_line_in_the_message_the_fields_or_the_exception(
    formatter: logging.Formatter,
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError("connect to amqp://guest:exception-secret@broker/ failed")
        except RuntimeError:
            logger.exception(
                "job finished with %s",
                "postgresql://app:message-secret@db/app",
                extra={
                    "error": "HTTP 501 from http://user:field-secret@127.0.0.1:8/x: <html>",
                    "detail": f"Bearer {TOKEN}",
                    "peer": "amqp://ops@corp.example:email-user-secret@broker:5672/",
                    "attempt": 2,
                },
            )
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    for secret in (
        "exception-secret",
        "message-secret",
        "field-secret",
        "email-user-secret",
        TOKEN,
    ):
        assert secret not in line
    # What is not secret stays, where it was.
    for kept in (
        "http://user:***@127.0.0.1:8/x",
        "postgresql://app:***@db/app",
        "amqp://ops@corp.example:***@broker:5672/",
        "Bearer",
    ):
        assert kept in line
    assert "attempt" in line


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("postgresql://u:pa?ss@db/x", "postgresql://u:***@db/x"),
        ("amqp://guest:s3cr#t@rabbit/", "amqp://guest:***@rabbit/"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://ops@corp.example:pw@broker:5672/", "amqp://ops@corp.example:***@broker:5672/"),
        ("http://u:p@host?notify=ops@example.com", "http://u:***@host?notify=ops@example.com"),
        ("a amqp://a:b@h1/ and redis://:c@h2/0", "a amqp://a:***@h1/ and redis://:***@h2/0"),
        ("GET /jobs?cursor=abc 200", "GET /jobs?cursor=abc 200"),
    ],
)
def test_a_url_password_is_redacted_wherever_it_ends(line: str, redacted: str) -> None:
    assert redact(line) == redacted
