"""The one validator for every path an LLM, a user or a zip names.

Used by the orchestrator before anything is published, by storage before anything is
stored, by the zip writer, and by the CLI before extracting. An accepted path is a
relative POSIX path that cannot leave the directory it is joined to.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_PATH_LENGTH = 255
MAX_PATH_DEPTH = 12
MAX_SEGMENT_LENGTH = 100

# Dot-files a generated project may legitimately contain. Anything else starting with a
# dot (.env, .git/, .ssh/ ...) is refused: it is either a secret or tool state.
ALLOWED_DOTFILES = frozenset(
    {".gitignore", ".dockerignore", ".editorconfig", ".python-version", ".env.example"}
)
ALLOWED_DOTDIRS = frozenset({".github"})

_WINDOWS_DEVICE_NAMES = frozenset(
    {
        "con",
        "prn",
        "aux",
        "nul",
        *(f"com{i}" for i in range(1, 10)),
        *(f"lpt{i}" for i in range(1, 10)),
    }
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RESERVED_CHARACTERS = re.compile(r'[<>:"|?*]')


class PathRejected(ValueError):
    """A path that is not allowed; `reason` says why in words a person can act on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"path {path!r} rejected: {reason}")
        self.path = path
        self.reason = reason


def safe_path(path: str) -> str:
    """The normalised form of `path`, or PathRejected saying why it is not allowed."""
    if not isinstance(path, str) or not path:
        raise PathRejected(str(path), "the path is empty")
    return _checked(path)


@lru_cache(maxsize=8192)
def _checked(path: str) -> str:
    # Cached: a version's paths come back in every event that touches them (only accepted
    # paths are kept; a rejected one raises again each time).
    shown = path[:80]
    if _CONTROL.search(path):
        raise PathRejected(shown, "it contains a control character (or NUL)")
    ascii_only = path.isascii()
    normalised = path if ascii_only else unicodedata.normalize("NFC", path)
    if "\\" in normalised:
        raise PathRejected(shown, "it contains a backslash; use '/' between folders")
    if len(normalised) > MAX_PATH_LENGTH:
        raise PathRejected(shown, f"it is longer than {MAX_PATH_LENGTH} characters")
    if normalised.startswith("/"):
        raise PathRejected(shown, "it is absolute; paths must be relative to the project")
    if len(normalised) >= 2 and normalised[1] == ":":
        raise PathRejected(shown, "it names a drive; paths must be relative to the project")
    if normalised.endswith("/"):
        raise PathRejected(shown, "it names a folder, not a file")
    segments = normalised.split("/")
    if len(segments) > MAX_PATH_DEPTH:
        raise PathRejected(shown, f"it is nested deeper than {MAX_PATH_DEPTH} folders")
    for index, segment in enumerate(segments):
        if segment in ("", "."):
            raise PathRejected(shown, "it has an empty or '.' segment")
        if segment == "..":
            raise PathRejected(shown, "it contains '..'")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise PathRejected(shown, f"a segment is longer than {MAX_SEGMENT_LENGTH} characters")
        if segment != segment.strip() or segment.endswith("."):
            raise PathRejected(shown, "a segment starts or ends with a space, or ends with '.'")
        if segment.split(".")[0].lower() in _WINDOWS_DEVICE_NAMES:
            raise PathRejected(shown, f"{segment!r} is a reserved device name")
        if _RESERVED_CHARACTERS.search(segment):
            raise PathRejected(shown, 'it contains one of the characters < > : " | ? *')
        if not ascii_only and any(
            unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in segment
        ):
            raise PathRejected(shown, "it contains an invisible formatting character")
        if segment.startswith("."):
            is_last = index == len(segments) - 1
            allowed = ALLOWED_DOTFILES if is_last else ALLOWED_DOTDIRS
            if segment not in allowed:
                raise PathRejected(
                    shown,
                    f"{segment!r} is a hidden file or folder that a generated project may not "
                    f"contain (allowed: {', '.join(sorted(ALLOWED_DOTFILES | ALLOWED_DOTDIRS))})",
                )
    return normalised


def is_safe_path(path: str) -> bool:
    """True when `safe_path` accepts the path unchanged."""
    try:
        return safe_path(path) == path
    except PathRejected:
        return False
