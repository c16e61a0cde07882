"""The job types built into every worker, and the payload each one takes.

The API checks a built-in type's payload when the job is submitted, so a malformed one is a 400 and
not a failed job; the worker checks it again, because anyone may publish to ``jobs.created``.
"""

import importlib
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from cloudtask.contracts.urls import check_host_and_port

SLEEP: Final = "sleep"
ECHO: Final = "echo"
EMAIL: Final = "email"
HTTP: Final = "http"

TYPE_PATTERN: Final = r"^[a-z0-9_.-]{1,64}$"


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SleepPayload(_Payload):
    seconds: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)]


# U+2028 and U+2029 as themselves, not as \u escapes, which Go's and other RE2 clients' regular
# expressions cannot read in the published schema.
_LINE_AND_PARAGRAPH_SEPARATORS = "\u2028\u2029"
# The spaces beyond ASCII and Latin-1's controls that Python counts as whitespace: the SMTP client
# refuses an address holding one, at every attempt (no-break, ogham, the typographic spaces).
_OTHER_SPACES = "\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
# One address: no control characters or spaces, none of the characters that would make the To
# header a list or a group of addresses (a comma sent one job's mail to several), and a domain
# with no empty part between its dots (a@b.com. was sent to <>). The local part may hold dots
# anywhere, as some providers' old addresses do (a..b@, a.@), and the mail library sends them.
# No ?: the mail library decodes a MIME encoded word (=?utf-8?q?...?=) in an address, and sent
# such a one to <> or to another address than the one given.
_NOT_IN_ADDRESS = (
    r'@?\x00-\x20\x7f-\x9f,;:<>()\[\]\\"' + _LINE_AND_PARAGRAPH_SEPARATORS + _OTHER_SPACES
)
_LABEL = rf"[^.{_NOT_IN_ADDRESS}]+"
EMAIL_ADDRESS = rf"^[^{_NOT_IN_ADDRESS}]+@{_LABEL}(\.{_LABEL})*$"
# A header line ends at a line break: a subject holding one is refused by the mail library when
# the job runs, so it is refused at submission (400) instead. The library breaks lines where
# Python's str.splitlines does (CR, LF, VT, FF, U+001C-U+001E, U+0085, U+2028, U+2029), and
# writes other control characters (NUL, ESC) into the header as they are, where RFC 5322 allows
# none: one line of text holds no control character but the tab.
_NOT_IN_ONE_LINE = r"\x00-\x08\x0a-\x1f\x7f-\x9f" + _LINE_AND_PARAGRAPH_SEPARATORS
ONE_LINE = rf"^[^{_NOT_IN_ONE_LINE}]*$"
# RFC 9110: a field name is a token; a value is visible ASCII, spaces and tabs (the HTTP client
# encodes header values as ASCII).
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE = r"^[\t\x20-\x7e]*$"


# A job's result, as JSON: a larger one fails the attempt (it travels in a message and is kept
# in the job's row). An ``http`` job's response body is in its result, escaped.
MAX_RESULT_BYTES: Final = 1024 * 1024


# A MIME encoded word (RFC 2047), as the mail library finds one in a header: from =? to the
# next ?= after its charset and encoding, spaces included. Wider than the RFC's, on purpose. The
# library also decodes a word that never ends if its text starts with an escape (=?utf-8?q?=0D...
# to the end of the header): such a one is taken to the end here, where it cannot be read.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?(?:.*?\?=|=[0-9A-Fa-f]{2}.*)", re.DOTALL)
_NOT_ONE_LINE = re.compile(f"[{_NOT_IN_ONE_LINE}]")
# The mail library's own decoder of one encoded word (private, but what it writes headers
# with): text, charset, language, defects. Reached by name, as the module has no type stubs.
_decode_word: Callable[[str], tuple[str, str, str, list[Any]]] = importlib.import_module(
    "email._encoded_words"
).decode


def _one_line_as_written(subject: str) -> str:
    """The mail library decodes the MIME encoded words in a subject (``=?utf-8?b?...?=``) before
    it writes the header: a line break encoded in one ended the header there, and what followed
    became headers of the attacker's (``Bcc:``) or the body. So each encoded word is decoded as
    the library decodes it, and refused if it holds a line break or another control character;
    one without is fine. A subject that decodes to another encoded word is refused too (from
    one word, or from two the library joins, as it drops the spaces between them): the library
    writes that one as it is, and the recipient's mail reader decodes it, line breaks included.
    Word by word: parsing a whole header of them takes milliseconds, on the api's event loop."""
    decoded: list[str] = []
    end = 0
    for word in _ENCODED_WORD.finditer(subject):
        gap = subject[end : word.start()]
        if not (end and gap.strip(" \t") == ""):
            decoded.append(gap)
        try:
            text, _, _, defects = _decode_word(word.group())
        except ValueError:  # a word read otherwise than here: refused rather than guessed at
            defects = [None]
        if defects:  # and one read with defects (an unknown charset, bytes not of its charset,
            # bad padding): the header's text gets its bytes otherwise than the word's text here
            raise ValueError("a MIME encoded word in the subject cannot be read")
        if _NOT_ONE_LINE.search(text):
            raise ValueError(
                "a MIME encoded word in the subject holds a line break or a control character"
            )
        decoded.append(text)
        end = word.end()
    if end and _ENCODED_WORD.search("".join(decoded) + subject[end:]):
        raise ValueError("a MIME encoded word in the subject decodes to another one")
    return subject


def is_one_line(text: str) -> bool:
    """Whether ``text`` (a subject as the mail library parsed it, decoded) is one line of text,
    and so is what a mail reader would decode of an encoded word the library left in it."""
    if _NOT_ONE_LINE.search(text):
        return False
    try:
        _one_line_as_written(text)
    except ValueError:
        return False
    return True


class EmailPayload(_Payload):
    # The ASCII spaces listed, not \s: which characters \s means differs between the server's
    # regex engine and a client's ECMA-262 one (U+0085), and the OpenAPI document must agree.
    to: Annotated[StrictStr, Field(min_length=3, max_length=320, pattern=EMAIL_ADDRESS)]
    subject: Annotated[
        StrictStr, Field(max_length=998, pattern=ONE_LINE), AfterValidator(_one_line_as_written)
    ]
    body: StrictStr = ""


def _has_host_and_port(url: str) -> str:
    check_host_and_port(url)
    return url


class HttpPayload(_Payload):
    # No control characters: the HTTP client refuses them in a URL.
    url: Annotated[
        StrictStr,
        Field(max_length=8192, pattern=r"^[hH][tT][tT][pP][sS]?://[^\x00-\x1f\x7f]*$"),
        AfterValidator(_has_host_and_port),
    ]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    # A name outside the pattern is refused, as the schema says with additionalProperties (a
    # key matching no patternProperties would otherwise be allowed by JSON Schema).
    headers: dict[
        Annotated[StrictStr, Field(pattern=HEADER_NAME)],
        Annotated[StrictStr, Field(pattern=HEADER_VALUE)],
    ] = Field(default_factory=dict, json_schema_extra={"additionalProperties": False})
    body: Any = None


BUILTIN_PAYLOADS: Final[dict[str, type[BaseModel] | None]] = {
    SLEEP: SleepPayload,
    ECHO: None,
    EMAIL: EmailPayload,
    HTTP: HttpPayload,
}
"""Each built-in type and its payload model (``None``: any JSON is accepted)."""
