"""The job types built into every worker, and the payload each one takes.

The API checks a built-in type's payload when the job is submitted, so a malformed one is a 400 and
not a failed job; the worker checks it again, because anyone may publish to ``jobs.created``.
"""

from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from cloudtask.contracts.mail_text import LINE_AND_PARAGRAPH_SEPARATORS, ONE_LINE, check_subject
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
    r'@?\x00-\x20\x7f-\x9f,;:<>()\[\]\\"' + LINE_AND_PARAGRAPH_SEPARATORS + _OTHER_SPACES
)
_LABEL = rf"[^.{_NOT_IN_ADDRESS}]+"
EMAIL_ADDRESS = rf"^[^{_NOT_IN_ADDRESS}]+@{_LABEL}(\.{_LABEL})*$"
# RFC 9110: a field name is a token; a value is visible ASCII, spaces and tabs (the HTTP client
# encodes header values as ASCII).
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE = r"^[\t\x20-\x7e]*$"


# A job's result, as JSON: a larger one fails the attempt (it travels in a message and is kept
# in the job's row). An ``http`` job's response body is in its result, escaped.
MAX_RESULT_BYTES: Final = 1024 * 1024


class EmailPayload(_Payload):
    # The ASCII spaces listed, not \s: which characters \s means differs between the server's
    # regex engine and a client's ECMA-262 one (U+0085), and the OpenAPI document must agree.
    to: Annotated[StrictStr, Field(min_length=3, max_length=320, pattern=EMAIL_ADDRESS)]
    subject: Annotated[
        StrictStr, Field(max_length=998, pattern=ONE_LINE), AfterValidator(check_subject)
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
