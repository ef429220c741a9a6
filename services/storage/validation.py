"""A message decoded and checked before its batch's transaction: the event, why it cannot be
projected (if so), and its audit index row. Pure: no database."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from sqlalchemy.engine import Dialect

from contracts import subjects
from contracts.codec import DecodeError, audit_view, decode_event, encode, encoded_event_hash
from contracts.events import (
    AnyEvent,
    FileDeleted,
    FileWritten,
    VersionBasedOn,
    event_tag,
)
from contracts.paths import PathRejected, safe_path
from services.common.eventlog import stream_seq
from services.storage.bulk import BoundRow, bind_row, sqlite_utc_text
from services.storage.db import json_text
from services.storage.models import events_table


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message as decoded and checked ahead of its transaction."""

    event: AnyEvent | None
    problem: str | None = None
    """Why the message is dead-lettered (undecodable, or not projectable), or None."""
    audit: BoundRow | None = None
    """Its audit index row, when it is valid (as `bind` made it)."""
    held: bool = False
    """A `file.written` named by content whose blob the read model already holds (its
    size checked against the event's): its content is neither read nor stored again."""


AuditRow = Callable[[bytes, int, AnyEvent], BoundRow]
"""Makes an event's audit row from its bytes, stream seq and decoding, as the database takes
it: `audit_row` (the row's dict), or `audit_binder`'s for one database."""


def decode_message(msg: Msg, audit: AuditRow | None = None) -> Decoded:
    """A message's event, checked against its subject, with its audit row; pure.

    `audit` makes the row as the database takes it (`audit_binder`), so that this work too
    is done ahead of the batch's transaction; by default it is the row's dict."""
    try:
        event = decode_event(msg.data)
    except DecodeError as exc:
        return Decoded(None, exc.reason)
    problem = _problem(msg.subject, event)
    if problem is not None:
        return Decoded(event, problem)
    return Decoded(event, None, (audit or audit_row)(msg.data, stream_seq(msg), event))


def audit_binder(dialect: Dialect) -> AuditRow:
    """The audit row as `dialect`'s database takes it (see `bulk.bind_row`): on SQLite its
    values in column order, built at once (`sqlite_audit_values`); elsewhere the dict."""
    if dialect.name == "sqlite":
        return sqlite_audit_values
    return lambda data, seq, event: bind_row(dialect, events_table, audit_row(data, seq, event))


def _problem(subject: str, event: AnyEvent) -> str | None:
    """Why a decoded event cannot be projected, or None."""
    ids = subjects.parse_event_subject(subject)
    if ids != (event.project_id, event.generation_id):
        return (
            f"an event of generation {event.generation_id} in project {event.project_id} "
            f"was published on {subject!r}"
        )
    if isinstance(event, FileWritten | FileDeleted):
        problem = _path_problem(event.path)
        if problem is not None:
            return problem
    if isinstance(event, VersionBasedOn):
        for inherited in event.files:
            problem = _path_problem(inherited.path)
            if problem is not None:
                return problem
        if len({f.path for f in event.files}) != len(event.files):
            return "a version.based_on names one path twice"
    if isinstance(event, FileWritten) and event.content is not None:
        return _content_problem(event, event.content)
    return None


def _content_problem(event: FileWritten, content: str) -> str | None:
    """Why `content` is not the file `event` names (size or sha256), or None."""
    data = content.encode()
    if len(data) != event.size:
        return f"{event.path!r} is {len(data)} bytes, not the {event.size} its event says"
    digest = hashlib.sha256(data).hexdigest()
    if digest != event.sha256:
        return f"the content of {event.path!r} has sha256 {digest}, not {event.sha256}"
    return None


def names_content(decoded: Decoded | None) -> str | None:
    """The sha256 of the blob a valid `file.written` names without inline content, or None."""
    if decoded is None or decoded.problem is not None:
        return None
    event = decoded.event
    if isinstance(event, FileWritten) and event.content is None:
        return event.sha256
    return None


def with_content(decoded: Decoded, content: str | None, missing: str = "") -> Decoded:
    """A `file.written` named by content, with the content read from the blob stream (or,
    where it is None, dead-lettered for `missing`: why it could not be read)."""
    event = decoded.event
    assert isinstance(event, FileWritten)
    if content is None:
        return Decoded(event, f"the content of {event.path!r} cannot be read: {missing}")
    problem = _content_problem(event, content)
    if problem is not None:
        return Decoded(event, problem)
    return Decoded(msgspec.structs.replace(event, content=content), None, decoded.audit)


def with_held_content(decoded: Decoded, size: int) -> Decoded:
    """A `file.written` named by content whose blob (of `size` bytes) a committed batch
    stored: the content is its sha256's, so only its size is left to check."""
    event = decoded.event
    assert isinstance(event, FileWritten)
    if size != event.size:
        return Decoded(
            event, f"{event.path!r} is {size} bytes, not the {event.size} its event says"
        )
    return Decoded(event, None, decoded.audit, held=True)


def _path_problem(path: str) -> str | None:
    """Why a file path of an event cannot be stored, or None."""
    try:
        normalised = safe_path(path)
    except PathRejected as exc:
        return str(exc)
    if normalised != path:
        return f"path {path[:80]!r} is not in its normal form {normalised[:80]!r}"
    return None


def _audit_body(data: bytes, event: AnyEvent) -> tuple[dict[str, Any] | msgspec.Raw, str]:
    """An event's audit object and its hash: its JSON object with any inline file content
    left out (the blob it is stored as puts it back: `ReadModel.stored_links`).

    Without inline content, when the bytes are exactly what this version encodes for the
    event, the object is the bytes themselves (`msgspec.Raw`, written as they are): the
    same JSON `audit_view`'s object encodes to, without building and encoding it again."""
    if not (isinstance(event, FileWritten) and event.content is not None) and encode(event) == data:
        return msgspec.Raw(data), encoded_event_hash(event)
    body, digest = audit_view(data, event)
    if isinstance(event, FileWritten) and body.get("content") is not None:
        del body["content"]
    return body, digest


# `sqlite_audit_values` gives the values in the table's column order.
assert tuple(c.name for c in events_table.columns) == (
    "stream_seq", "generation_id", "project_id", "seq", "type", "at", "progress", "body", "hash"
)  # fmt: skip


def sqlite_audit_values(data: bytes, seq: int, event: AnyEvent) -> tuple[Any, ...]:
    """`bind_row(sqlite, events_table, audit_row(data, seq, event))`, built directly: no
    dict, and the bytes themselves as the body's JSON text where they are the object (a
    third of the time; tests/storage/test_validation.py checks the two agree)."""
    body, digest = _audit_body(data, event)
    return (
        seq,
        event.generation_id,
        event.project_id,
        event.seq,
        event_tag(type(event)),
        sqlite_utc_text(event.at),
        event.progress,
        data.decode() if isinstance(body, msgspec.Raw) else json_text(body),
        digest,
    )


def audit_row(data: bytes, seq: int, event: AnyEvent) -> dict[str, Any]:
    """The audit index row of an event (every column), its object from `_audit_body`."""
    body, digest = _audit_body(data, event)
    return {
        "stream_seq": seq,
        "generation_id": event.generation_id,
        "project_id": event.project_id,
        "seq": event.seq,
        "type": event_tag(type(event)),
        "at": event.at,
        "progress": event.progress,
        "body": body,
        "hash": digest,
    }
