"""Logging: JSON lines with stable keys (``action``, ``jobId``, ``attempt``, ``workerId``,
``service``) when the output is not a terminal, readable lines when it is.

A redacting filter replaces anything shaped like a JWT or a password in a URL, whatever logged it
(our code, uvicorn, a driver's exception), so no log line carries a secret.
"""

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
# The password runs to the "@" after which the host runs to a path, a query or the end: a user
# may be an email address, and a password may hold "?" or "#", unencoded; an "@" in a query
# (?notify=ops@example.com) is not the host's.
_URL_PASSWORD = re.compile(
    r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#\s]*:)[^\s/]+?@(?=[^\s/?#@]*(?:[/?#\s]|$))"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    text = _JWT.sub("[redacted-token]", text)
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _BEARER.sub(r"\1[redacted]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        # The fields given in ``extra`` too: a job's error quotes the URL it failed on.
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in _STANDARD:
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JSONFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure(
    service: str, level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Send every log record (ours, uvicorn's, the drivers') through one redacting handler."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(service) if use_json else ConsoleFormatter(service))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    # The drivers log every failed reconnection attempt as an error, once a second while a server
    # is down; CloudTask logs the outage itself (and health reports it), so they only speak when
    # something unusual happens.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # The HTTP client logs each request's whole URL at INFO: an http job's URL is its payload,
    # and its query often carries a token.
    for talkative in ("httpx", "httpcore"):
        logging.getLogger(talkative).setLevel(max(logging.getLevelName(level), logging.WARNING))
