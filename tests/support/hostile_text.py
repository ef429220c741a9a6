"""Hostile text shared by the tests that prove it never reaches a generated file raw:
raw HTML, and the characters no generated file may hold (NUL, ESC, DEL, bidi controls)."""

from __future__ import annotations

from services.orchestrator.providers.offline.text import BIDI_CONTROLS

SCRIPT = "<script>alert(1)</script>"
UNSAFE = ("\x00", "\x1b", "\x7f", *BIDI_CONTROLS)
