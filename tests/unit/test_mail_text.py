"""Subjects as the mail library writes them: what is refused before it is looked up."""

import encodings
import uuid

import pytest

from cloudtask.contracts.mail_text import check_subject


def test_a_charset_python_does_not_know_is_refused_without_being_looked_up() -> None:
    # Python's codec lookup keeps every name it failed to find, for good: made-up charsets
    # grew the api by a megabyte per batch of subjects.
    name = f"made-up-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="unknown charset"):
        check_subject(f"=?{name}?q?a?=")
    cache = encodings._cache  # type: ignore[attr-defined]
    assert not [key for key in cache if name.replace("-", "_") in key.replace("-", "_")]


@pytest.mark.parametrize(
    "charset", ["utf-8", "UTF-8", "utf8", "ISO-8859-1", "latin1", "windows-1252", "us-ascii",
                "iso-2022-jp", "shift_jis", "euc-kr", "ks_c_5601-1987", "gb18030", "koi8-r"],
)  # fmt: skip
def test_the_charsets_mail_programs_write_are_known(charset: str) -> None:
    assert check_subject(f"=?{charset}?q?abc?=") == f"=?{charset}?q?abc?="
