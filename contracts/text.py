"""Text a person chooses that Kiln copies into generated files, headers and logs (project
names, entity and field names, descriptions): no control, format or line-separator
characters, so a NUL, a right-to-left override (U+202E) or a zero-width character never
reaches README.md, kiln.json or pyproject.toml, and no text can hide what it says.
"""

from __future__ import annotations

import unicodedata

# Cc: controls (NUL, newline, escape); Cf: format (bidi overrides and isolates, zero-width
# joiners, the BOM); Cs: lone surrogates; Zl, Zp: the line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def refused_character(text: str) -> str | None:
    """The first character `text` may not contain, named (`U+202E RIGHT-TO-LEFT OVERRIDE`),
    or None when every character is allowed."""
    for ch in text:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            name = unicodedata.name(ch, "a control character")
            return f"U+{ord(ch):04X} {name}"
    return None


def text_problem(text: str) -> str | None:
    """A message saying why `text` is refused, or None."""
    refused = refused_character(text)
    if refused is None:
        return None
    return f"must not contain control, bidi or invisible characters (found {refused})"
