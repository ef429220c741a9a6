"""A message decoded and checked ahead of its transaction: the audit row's object is the
JSON the event's own object encodes to, whether taken from the bytes as they are (the
usual case) or built (inline content left out, bytes of another layout); on SQLite the row
is built as SQLAlchemy would bind it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from contracts import subjects
from contracts.codec import audit_view, decode_event, encode
from contracts.events import (
    Event,
    FileWritten,
    GenerationRequested,
    InheritedFile,
    PhaseStarted,
    VersionBasedOn,
)
from contracts.schema import ProjectSchema
from services.storage.bulk import bind_row
from services.storage.db import create_engine, json_text
from services.storage.models import events_table
from services.storage.validation import (
    audit_binder,
    audit_row,
    decode_message,
    sqlite_audit_values,
)
from tests.storage.conftest import sha

PROJECT, GENERATION = str(uuid.uuid4()), str(uuid.uuid4())
COMMON: dict[str, Any] = {
    "event_id": str(uuid.uuid4()),
    "generation_id": GENERATION,
    "project_id": PROJECT,
    "seq": 3,
    "at": datetime(2026, 12, 3, 8, 0, 1, 123456, tzinfo=UTC),
    "prev_hash": "ab" * 32,
}
CONTENT = "print('✓')\n"
EVENTS: list[Event] = [
    GenerationRequested(
        **COMMON,
        owner="alice",
        project_name="shop ✓",
        version=2,
        schema=msgspec.convert({"entities": []}, ProjectSchema),
        locked_paths=["a.py"],
    ),
    PhaseStarted(**COMMON, phase="models", progress=5),
    FileWritten(
        **COMMON, path="a.py", sha256=sha(CONTENT), size=len(CONTENT.encode()), phase="models"
    ),
    FileWritten(
        **COMMON,
        path="a.py",
        sha256=sha(CONTENT),
        size=len(CONTENT.encode()),
        phase="models",
        content=CONTENT,
    ),
    VersionBasedOn(
        **COMMON,
        parent_generation_id=str(uuid.uuid4()),
        files=[InheritedFile(path="b.py", sha256=sha("b"), size=1)],
    ),
]


def _message(data: bytes) -> Msg:
    return Msg(
        _client=None,  # type: ignore[arg-type]
        subject=subjects.generation_events(PROJECT, GENERATION),
        reply="$JS.ACK.KILN_EVENTS.storage.1.42.1.1764748801000000000.0",
        data=data,
    )


def _expected_body(data: bytes, event: Event) -> bytes:
    """The audit object as storage built it before it took the bytes as they are."""
    body, _ = audit_view(data, event)  # type: ignore[arg-type]
    if isinstance(event, FileWritten) and body.get("content") is not None:
        del body["content"]
    return msgspec.json.encode(body)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_the_audit_object_is_the_events_json_without_inline_content(event: Event) -> None:
    data = encode(event)
    newer = data[:-1] + b',"field_of_a_newer_kiln":{"x":[1,2]}}'
    spaced = msgspec.json.format(data, indent=1)
    for variant in (data, newer, spaced):
        decoded = decode_message(_message(variant))
        assert decoded.problem is None and decoded.audit is not None
        assert isinstance(decoded.audit, dict)
        body = json_text(decoded.audit["body"]).encode()
        assert body == _expected_body(variant, decoded.event)  # type: ignore[arg-type]
        assert b'"content":"' not in body
        assert decoded.audit["hash"] == audit_view(variant, decoded.event)[1]  # type: ignore[arg-type]
        assert decoded.audit["stream_seq"] == 42


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_the_sqlite_audit_values_are_the_audit_row_as_sqlalchemy_binds_it(
    event: Event, tmp_path: Path
) -> None:
    dialect = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}").dialect
    data = encode(event)
    newer = data[:-1] + b',"field_of_a_newer_kiln":{"x":[1,2]}}'
    spaced = msgspec.json.format(data, indent=1)
    for variant in (data, newer, spaced):
        decoded = decode_event(variant)
        assert audit_binder(dialect) is sqlite_audit_values
        assert sqlite_audit_values(variant, 42, decoded) == bind_row(
            dialect, events_table, audit_row(variant, 42, decoded)
        )
        assert decode_message(_message(variant), audit_binder(dialect)).audit == (
            sqlite_audit_values(variant, 42, decoded)
        )
