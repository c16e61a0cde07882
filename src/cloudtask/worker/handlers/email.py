"""``email``: sends one message through the SMTP server at ``SMTP_URL``.

``SMTP_URL`` is ``smtp://[user:password@]host[:port]`` (port 25; ``?starttls=true`` to require
STARTTLS) or ``smtps://…`` (implicit TLS, port 465). Under ``cloudtask dev`` without ``SMTP_URL``,
the message is written to a local mail folder instead, and the result says where.
"""

import asyncio
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from pydantic import ValidationError

from cloudtask.contracts.job_types import EmailPayload
from cloudtask.contracts.mail_text import is_one_line
from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings


class EmailHandler:
    def __init__(self, settings: Settings, mail_dir: Path | None) -> None:
        self._url = settings.smtp_url.get_secret_value() if settings.smtp_url else None
        self._sender = settings.smtp_from
        self._timeout = settings.smtp_timeout_seconds
        self._mail_dir = mail_dir

    async def __call__(self, payload: Any) -> dict[str, Any]:
        try:
            mail = EmailPayload.model_validate(payload)
        except ValidationError as exc:
            raise PermanentFailure(f"invalid email payload: {exc.errors()[0]['msg']}") from None
        message = EmailMessage()
        try:
            message["From"] = self._sender
            message["To"] = mail.to
            message["Subject"] = mail.subject
        except ValueError as exc:  # a header the mail library refuses: so would every attempt
            raise PermanentFailure(f"invalid email header: {exc}") from None
        # As the library will write it, its encoded words decoded (the payload's check does the
        # same, word by word; this is the last word on it).
        if not is_one_line(str(message["Subject"])):
            raise PermanentFailure("invalid email header: the subject is not one line of text")
        message["Message-ID"] = make_msgid(domain="cloudtask")
        message["Date"] = formatdate(usegmt=True)  # RFC 5322 requires it
        message.set_content(mail.body)
        if self._url is not None:
            await self._send(message)
            return {"to": mail.to, "messageId": message["Message-ID"]}
        if self._mail_dir is not None:
            path = await asyncio.to_thread(self._save, message)
            return {"to": mail.to, "messageId": message["Message-ID"], "savedTo": str(path)}
        raise PermanentFailure("email is not configured: set CLOUDTASK_SMTP_URL")

    async def _send(self, message: EmailMessage) -> None:
        assert self._url is not None  # noqa: S101 - checked by the caller
        parts = urlsplit(self._url)
        implicit_tls = parts.scheme == "smtps"
        options = parse_qs(parts.query)
        try:
            await aiosmtplib.send(
                message,
                hostname=parts.hostname or "localhost",
                port=parts.port or (465 if implicit_tls else 25),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                use_tls=implicit_tls,
                # Checked at start (settings.py): one value, true or false in any case.
                start_tls=True if options.get("starttls", [""])[0].lower() == "true" else None,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            if codes and all(_permanent(code) for code in codes):
                raise PermanentFailure(f"the SMTP server refused the recipient: {exc}") from None
            raise ConnectionError(f"SMTP: the server deferred the recipient: {exc}") from None
        except aiosmtplib.SMTPResponseException as exc:
            if _permanent(exc.code):
                raise PermanentFailure(f"the SMTP server refused the message: {exc}") from None
            raise ConnectionError(f"SMTP: {type(exc).__name__}: {exc}") from None
        except aiosmtplib.SMTPNotSupported as exc:
            # A message that needs SMTPUTF8 (an address beyond ASCII) cannot go through a server
            # without it, at any attempt. A missing STARTTLS or AUTH is tried again: it may be
            # a server being set up, or STARTTLS stripped by someone on the way.
            if "SMTPUTF8" in str(exc):
                raise PermanentFailure(f"the SMTP server cannot take this message: {exc}") from None
            raise ConnectionError(f"SMTP: {type(exc).__name__}: {exc}") from None
        except aiosmtplib.SMTPException as exc:
            # Connection trouble: worth another attempt.
            raise ConnectionError(f"SMTP: {type(exc).__name__}: {exc}") from None

    def _save(self, message: EmailMessage) -> Path:
        assert self._mail_dir is not None  # noqa: S101 - checked by the caller
        self._mail_dir.mkdir(parents=True, exist_ok=True)
        path = self._mail_dir / f"{uuid.uuid4()}.eml"
        path.write_bytes(message.as_bytes())
        return path


def _permanent(code: int) -> bool:
    """A 5xx reply refuses for good; a 4xx one (greylisting, a full mailbox) only for now."""
    return 500 <= code < 600
