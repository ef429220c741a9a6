"""The shared fold table (fold_cases.json): its cases, decoded, and a state in its words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from contracts.codec import decode_event
from contracts.events import AnyEvent
from contracts.state import GenerationState

TABLE = Path(__file__).with_name("fold_cases.json")


class FoldCase(msgspec.Struct, frozen=True):
    """One case: events as the wire has them, and the fields they must fold to."""

    name: str
    about: str
    events: list[dict[str, Any]]
    expect: dict[str, Any]
    blobs: list[str] = []
    """Contents its events name by sha256 (a `version.based_on`, a `file.written` without
    content): stored in the broker before its events."""

    def decoded(self) -> list[AnyEvent]:
        """The case's events, decoded as every service decodes them."""
        return [decode_event(json.dumps(event).encode()) for event in self.events]


CASES: list[FoldCase] = msgspec.convert(json.loads(TABLE.read_text())["cases"], list[FoldCase])


def observed(state: GenerationState) -> dict[str, Any]:
    """A state as the table's `expect` names it, in JSON's types."""
    values: dict[str, Any] = msgspec.to_builtins(state.summary)
    values["files"] = {
        path: {"size": f.size, "sha256": f.sha256, "phase": f.phase, "origin": f.origin}
        for path, f in state.files.items()
    }
    values["deleted"] = dict(state.deleted)
    values["retrying"] = state.retrying is not None
    return values


def mismatches(expect: dict[str, Any], got: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """field → (expected, got) for every expected field that differs."""
    return {k: (v, got.get(k, "<missing>")) for k, v in expect.items() if got.get(k) != v}
