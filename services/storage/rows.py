"""A generation's summary ↔ its `generations` row: the one place they are mapped.

The row holds `contracts.state.GenerationSummary` field by field, each in the column of
the same name (two renamed, below), so a field added to the summary needs only its column
(models.py and a migration) to be stored and read back; nothing is copied by hand.
`tests/storage/test_rows.py` fails when a summary field has neither a column nor a place
in `NOT_STORED`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from sqlalchemy.engine import RowMapping

from contracts.state import GenerationSummary

S = TypeVar("S", bound=GenerationSummary)

RENAMED: dict[str, str] = {"generation_id": "id", "phase_durations_ms": "phase_durations"}
"""Summary field → column, where the names differ."""
NOT_STORED: dict[str, str] = {
    "project_name": "the project's name, in `projects` (the read model joins it)",
    "phases_started": "only the orchestrator resumes by it, from the log",
    "phases_completed": "only the orchestrator resumes by it, from the log",
}
"""Summary fields without a column, and why; read back as their defaults."""

STORED: dict[str, str] = {
    name: RENAMED.get(name, name)
    for name in GenerationSummary.__struct_fields__
    if name not in NOT_STORED
}
"""Summary field → its column in `generations`."""


def row_values(summary: GenerationSummary) -> dict[str, Any]:
    """The `generations` columns that hold a summary (a nested Struct as its JSON value)."""
    return {column: _column_value(getattr(summary, name)) for name, column in STORED.items()}


def _column_value(value: Any) -> Any:
    if isinstance(value, str):
        # PostgreSQL's text cannot hold NUL (a failure message may quote a hostile path
        # that has one): it is stored as the visible `\x00`, on every database alike.
        return value.replace("\x00", "\\x00")
    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else value


def from_row(row: RowMapping, into: type[S]) -> S:
    """The summary (or a subclass of it, such as the read model's view) a row holds.

    Columns of the row named like a field of `into` and not in `STORED` (the joined
    `project_name`, the view's `last_stream_seq`) are taken as they are.
    """
    columns = set(STORED.values())
    values = {name: row[column] for name, column in STORED.items()}
    values.update(
        (name, row[name])
        for name in into.__struct_fields__
        if name not in STORED and name in row and name not in columns
    )
    return msgspec.convert(values, into, strict=False)
