"""An ``email`` job whose headers the mail library refuses fails once, without retries: every
attempt would be refused the same way."""

import asyncio
import os
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings, SettingsError, load_settings
from cloudtask.worker.handlers.email import EmailHandler


@pytest.mark.parametrize(
    "subject",
    [
        *(f"two{line_break}lines" for line_break in ["\n", "\x0b", "\x85", "\u2028"]),
        # Encoded: the mail library decoded it and wrote Bcc: evil@example.com as a header.
        "Hi =?utf-8?q?x=0D=0ABcc:_evil@example.com?=",
        "=?utf-8?q?Invoice=0A?=",  # the headers after Subject went into the body
    ],
)
async def test_a_subject_of_more_than_one_line_published_straight_to_the_worker_is_permanent(
    tmp_path: Path, subject: str
) -> None:
    # Refused at submission (400); anyone may still publish such a payload to jobs.created.
    handler = EmailHandler(Settings(_env_file=None), tmp_path)
    with pytest.raises(PermanentFailure, match="invalid email payload"):
        await handler({"to": "a@example.com", "subject": subject})
    assert not os.listdir(tmp_path)


async def test_a_subject_with_an_encoded_word_of_one_line_is_sent_as_its_text(
    tmp_path: Path,
) -> None:
    handler = EmailHandler(Settings(_env_file=None), tmp_path)
    result = await handler({"to": "a@example.com", "subject": "Re: =?utf-8?q?caf=C3=A9?="})
    sent = await asyncio.to_thread(Path(result["savedTo"]).read_bytes)
    message = message_from_bytes(sent, _class=EmailMessage, policy=policy.default)
    assert message["Subject"] == "Re: caf\u00e9"
    assert [name for name, _ in message.items()] == [
        "From", "To", "Subject", "Message-ID", "Date", "Content-Type",
        "Content-Transfer-Encoding", "MIME-Version",
    ]  # fmt: skip


async def test_a_sender_the_mail_library_refuses_is_refused_at_start_and_by_the_handler(
    tmp_path: Path,
) -> None:
    sender = "Cloud\u2028Task <cloudtask@localhost>"
    with pytest.raises(SettingsError, match=r"^CLOUDTASK_SMTP_FROM: "):
        load_settings(env_file=None, smtp_from=sender)
    # Settings made in code (model_copy) skip that check: the handler's own still holds.
    settings = Settings(_env_file=None).model_copy(update={"smtp_from": sender})
    handler = EmailHandler(settings, tmp_path)
    with pytest.raises(PermanentFailure, match="invalid email header"):
        await handler({"to": "a@example.com", "subject": "Hi"})
    assert not os.listdir(tmp_path)
