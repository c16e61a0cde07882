"""Text that goes into a mail header: one line, and what the mail library decodes of it.

The mail library decodes the MIME encoded words (RFC 2047, ``=?utf-8?b?...?=``) in a subject
before it writes the header: a line break encoded in one ended the header there, and what followed
became headers of the attacker's (``Bcc:``) or the body. So a subject is read here as the library
reads it, word by word, at submission (a 400) and by the email handler (its last check): every
word decoded, refused if it holds a line break or another control character, and the subject
refused if it decodes to another encoded word (from one word, or from two the library joins, as it
drops the spaces between them), which the library writes as it is and a mail reader decodes.

Word by word, in time linear in the subject's length: parsing a whole header takes milliseconds,
on the api's event loop, for each of a batch's thousand jobs.
"""

import encodings
import importlib
import re
from collections.abc import Callable, Iterator
from encodings import aliases, normalize_encoding
from pkgutil import iter_modules
from typing import Any

# U+2028 and U+2029 as themselves, not as \u escapes, which Go's and other RE2 clients' regular
# expressions cannot read in the published schema.
LINE_AND_PARAGRAPH_SEPARATORS = "\u2028\u2029"
# A header line ends at a line break: a subject holding one is refused by the mail library when
# the job runs, so it is refused at submission (400) instead. The library breaks lines where
# Python's str.splitlines does (CR, LF, VT, FF, U+001C-U+001E, U+0085, U+2028, U+2029), and
# writes other control characters (NUL, ESC) into the header as they are, where RFC 5322 allows
# none: one line of text holds no control character but the tab.
_NOT_IN_ONE_LINE = r"\x00-\x08\x0a-\x1f\x7f-\x9f" + LINE_AND_PARAGRAPH_SEPARATORS
ONE_LINE = rf"^[^{_NOT_IN_ONE_LINE}]*$"
_NOT_ONE_LINE = re.compile(f"[{_NOT_IN_ONE_LINE}]")

# Where the library finds an encoded word: from =? past its charset and encoding to the next ?=,
# spaces included (wider than the RFC's, on purpose); and a word that never ends, if its text
# starts with an escape (=?utf-8?q?=0D...), which the library decodes to the end of the header,
# and which is taken to the end here, where it cannot be read.
_WORD_START = re.compile(r"=\?[^?]*\?[bBqQ]\?")
_UNENDED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?=[0-9A-Fa-f]{2}")
# An encoded word as RFC 2047 spells it, as a mail reader decodes one.
_READABLE_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# The mail library's own decoder of one encoded word (private, but what it writes headers
# with): text, charset, language, defects. Reached by name, as the module has no type stubs.
_decode_word: Callable[[str], tuple[str, str, str, list[Any]]] = importlib.import_module(
    "email._encoded_words"
).decode
# Defects after which the header's text gets a word's bytes otherwise than the word's text here
# (as unknown bytes): a charset Python does not know, bytes not of the word's charset. Others
# (base64 padding) decode the same both ways.
_UNREADABLE = ("CharsetError", "UndecodableBytesDefect")
# The charsets Python's codecs know, by the names their lookup tries. A name outside them is
# refused before it is looked up: the lookup keeps every name it failed to find, for good, so
# made-up names grew the api by a megabyte per batch.
_CHARSETS = frozenset(
    [*aliases.aliases, *aliases.aliases.values()]
    + [module.name for module in iter_modules(encodings.__path__) if module.name != "aliases"]
)


def check_subject(subject: str) -> str:
    """``subject`` if the mail library writes it as one line of text; raise ``ValueError``."""
    decoded: list[str] = []
    end = 0
    for start, stop in _encoded_words(subject):
        gap = subject[end:start]
        if not (end and gap.strip(" \t") == ""):
            decoded.append(gap)
        decoded.append(_decoded(subject[start:stop]))
        end = stop
    if end and next(_encoded_words("".join(decoded) + subject[end:]), None) is not None:
        raise ValueError("a MIME encoded word in the subject decodes to another one")
    return subject


def is_one_line(text: str) -> bool:
    """Whether ``text`` (a subject as the mail library parsed it, decoded) is one line of text,
    and so is what a mail reader would decode of an encoded word the library left in it, as
    RFC 2047 spells one (no spaces inside)."""
    if _NOT_ONE_LINE.search(text):
        return False
    for word in _READABLE_WORD.finditer(text):
        try:
            _decoded(word.group())
        except UnknownCharset:
            continue  # no reader decodes it either
        except ValueError:
            return False
    return True


def _encoded_words(text: str) -> Iterator[tuple[int, int]]:
    """The spans of the encoded words in ``text``, left to right, none overlapping."""
    position = 0
    while (start := _WORD_START.search(text, position)) is not None:
        end = text.find("?=", start.end())
        if end == -1:  # no word ends from here on: one that never does, if any
            unended = _UNENDED_WORD.search(text, start.start())
            if unended is not None:
                yield unended.start(), len(text)
            return
        yield start.start(), end + 2
        position = end + 2


class UnknownCharset(ValueError):
    pass


def _decoded(word: str) -> str:
    charset = word[2:].partition("?")[0].partition("*")[0]  # a language may follow a *
    if not _known_charset(charset):
        raise UnknownCharset("a MIME encoded word in the subject has an unknown charset")
    try:
        text, _, _, defects = _decode_word(word)
    except ValueError:  # a word read otherwise than here: refused rather than guessed at
        raise ValueError("a MIME encoded word in the subject cannot be read") from None
    if any(type(defect).__name__ in _UNREADABLE for defect in defects):
        raise ValueError("a MIME encoded word in the subject cannot be read")
    if _NOT_ONE_LINE.search(text):
        raise ValueError(
            "a MIME encoded word in the subject holds a line break or a control character"
        )
    return text


def _known_charset(name: str) -> bool:
    # As Python's codecs look a name up: lower case, punctuation as underscores, then aliases.
    normal = normalize_encoding(name.lower())
    return normal in _CHARSETS or normal.replace(".", "_") in _CHARSETS
