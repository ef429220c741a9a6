"""A message decoded and checked before its batch's transaction: the event, why it cannot be
projected (if so), and its audit index row. Pure: no database."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg

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
from services.storage.bulk import BoundRow


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


def decode_message(msg: Msg, bind: Callable[[dict[str, Any]], BoundRow] | None = None) -> Decoded:
    """A message's event, checked against its subject, with its audit row; pure.

    `bind` turns the audit row into what the database takes (`bulk.bind_row`), so that
    this work too is done ahead of the batch's transaction."""
    try:
        event = decode_event(msg.data)
    except DecodeError as exc:
        return Decoded(None, exc.reason)
    problem = _problem(msg.subject, event)
    if problem is not None:
        return Decoded(event, problem)
    row = _audit_row(msg.data, stream_seq(msg), event)
    return Decoded(event, None, row if bind is None else bind(row))


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


def _audit_row(data: bytes, seq: int, event: AnyEvent) -> dict[str, Any]:
    """The audit index row of an event: its JSON object with any inline file content left
    out (the blob it is stored as puts it back: `ReadModel.stored_links`).

    Without inline content, when the bytes are exactly what this version encodes for the
    event, the object is the bytes themselves (`msgspec.Raw`, written as they are): the
    same JSON `audit_view`'s object encodes to, without building and encoding it again."""
    if not (isinstance(event, FileWritten) and event.content is not None) and encode(event) == data:
        body: dict[str, Any] | msgspec.Raw = msgspec.Raw(data)
        digest = encoded_event_hash(event)
    else:
        body, digest = audit_view(data, event)
        if isinstance(event, FileWritten) and body.get("content") is not None:
            del body["content"]
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
