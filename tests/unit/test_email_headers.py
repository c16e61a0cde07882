"""An ``email`` job whose headers the mail library refuses fails once, without retries: every
attempt would be refused the same way."""

import os
from pathlib import Path

import pytest

from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings
from cloudtask.worker.handlers.email import EmailHandler


@pytest.mark.parametrize("line_break", ["\n", "\x0b", "\x85", "\u2028"])
async def test_a_subject_of_more_than_one_line_published_straight_to_the_worker_is_permanent(
    tmp_path: Path, line_break: str
) -> None:
    # Refused at submission (400); anyone may still publish such a payload to jobs.created.
    handler = EmailHandler(Settings(_env_file=None), tmp_path)
    with pytest.raises(PermanentFailure, match="invalid email payload"):
        await handler({"to": "a@example.com", "subject": f"two{line_break}lines"})
    assert not os.listdir(tmp_path)


async def test_a_sender_the_mail_library_refuses_fails_the_job_without_retries(
    tmp_path: Path,
) -> None:
    settings = Settings(_env_file=None, smtp_from="Cloud\u2028Task <cloudtask@localhost>")
    handler = EmailHandler(settings, tmp_path)
    with pytest.raises(PermanentFailure, match="invalid email header"):
        await handler({"to": "a@example.com", "subject": "Hi"})
    assert not os.listdir(tmp_path)
