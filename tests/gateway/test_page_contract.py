"""The page listens for every event type the contracts define: an event type it did not
know would look like a gap in the stream, and the page would reconnect forever."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.events import EVENT_TYPES, TERMINAL_TAGS, event_tag

STATIC = Path(__file__).resolve().parents[2] / "services" / "gateway" / "static"


def _js_list(name: str) -> set[str]:
    text = (STATIC / "stream.js").read_text()
    found = re.search(rf"export const {name} = (?:new Set\()?\[(.*?)\]", text, re.S)
    assert found, f"stream.js defines {name}"
    return set(re.findall(r'"([a-z_.]+)"', found.group(1)))


def test_the_page_listens_for_every_event_type() -> None:
    assert _js_list("EVENT_TYPES") == {event_tag(t) for t in EVENT_TYPES}


def test_the_page_ends_a_stream_at_the_same_terminal_events() -> None:
    assert _js_list("TERMINAL_TYPES") == set(TERMINAL_TAGS)
