"""User text on its way into generated files: cleaned, then escaped for the file's format.

A project name, a prompt and the descriptions in a schema are free text from whoever
called the API. Before any of it reaches a generated file it is *cleaned* — control
characters and the invisible bidirectional controls that can make text read differently
from what it is (U+202E and friends) are removed, line breaks become spaces where a
single line is wanted — and then *escaped* for where it goes: Markdown (`markdown`),
TOML (`toml_string`); kiln.json is written by msgspec's JSON encoder.
"""

from __future__ import annotations

import html
import re
import unicodedata

# Explicit directional formatting characters (Unicode TR9) and the implicit marks.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# Characters that read as a line break or a tab: a space where they are not kept.
_BREAKS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")


# Every character `clean_text` does not keep as it is: the control characters (category
# Cc: U+0000-001F, U+007F-009F), surrogates (Cs), the bidi controls, U+2028 and U+2029.
_NOT_PLAIN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)


def _replaced(char: str, multiline: bool) -> str:
    if char in BIDI_CONTROLS:
        return ""
    if multiline and char in "\n\t":
        return char
    if char in _BREAKS:
        return " "
    return ""  # any other control character, or a surrogate


def clean_text(text: str, *, multiline: bool = False) -> str:
    """`text` without control, bidi or surrogate characters.

    Line breaks and tabs are kept as `\\n` and `\\t` when `multiline` (a `\\r\\n` becomes
    `\\n`), else they become spaces; every other control character is removed.
    """
    if multiline:
        text = text.replace("\r\n", "\n")
    return _NOT_PLAIN.sub(lambda match: _replaced(match.group(), multiline), text)


def clean_line(text: str) -> str:
    """`text` cleaned onto one line, with runs of white space as one space."""
    return " ".join(clean_text(text).split())


# Markdown punctuation that can start emphasis, code, links, tables or strikethrough.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]{}|~!])")
# What makes a line a heading, a list item, a quote or a rule when it starts it.
_MARKDOWN_LINE_START = re.compile(r"^(\d*)([#+=.)-])")


def markdown_text(text: str) -> str:
    """User text as inert Markdown on one line: no HTML, links, emphasis or code.

    HTML-escaped (`<`, `>`, `&`), Markdown punctuation backslash-escaped, and a leading
    marker of a heading or list escaped, so the text reads exactly as it was written.
    """
    line = _MARKDOWN_INLINE.sub(r"\\\1", clean_line(text))
    line = html.escape(line, quote=False)
    return _MARKDOWN_LINE_START.sub(r"\1\\\2", line)


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """A TOML basic string (double-quoted) holding exactly `value`."""
    escaped: list[str] = []
    for char in value:
        if char in _TOML_ESCAPES:
            escaped.append(_TOML_ESCAPES[char])
        elif unicodedata.category(char) == "Cc":
            escaped.append(f"\\u{ord(char):04x}")
        elif unicodedata.category(char) == "Cs":
            escaped.append("\ufffd")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
