"""What the services log goes through one redacting filter: the message, the exception and the
fields given beside them."""

import io
import logging

import pytest

from cloudtask.log import ConsoleFormatter, JSONFormatter, RedactingFilter

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
