"""Subscribing to Kiln's events from another service: typed events, in order, resumable.

    async for received in subscribe(nc, generation_id=gid):
        match received.event:
            case GenerationCompleted(file_count=n):
                ...

Each subscription is a JetStream ordered consumer (ephemeral, flow-controlled, idle
heartbeat every second): when the broker restarts or a message goes missing the client
recreates it after the last event it delivered, so the iterator neither skips nor repeats.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts import streams, subjects
from contracts.codec import DecodeError, decode_event
from contracts.events import AnyEvent, Event, event_tag
from services.common.eventlog import subscribe_ordered
from services.common.logs import get_logger

log = get_logger(__name__)

HEARTBEAT_S = 1.0


@dataclass(frozen=True, slots=True)
class Received:
    """One event as delivered: the typed event, its stream sequence, subject and bytes.

    `stream_seq` is the position to resume from (`since=received.stream_seq`); the same
    number is the SSE `id` of the gateway's stream. `data` is the event exactly as stored,
    which is what the hash chain covers.
    """

    stream_seq: int
    subject: str
    stored_at: datetime
    data: bytes
    event: AnyEvent

    @property
    def type(self) -> str:
        """The event's dotted tag, e.g. `phase.completed`."""
        return event_tag(type(self.event))


def subject_filter(project_id: str | None = None, generation_id: str | None = None) -> str:
    """The events subject that selects one generation, one project, or everything."""
    if generation_id and project_id:
        return subjects.generation_events(project_id, generation_id)
    if generation_id:
        return subjects.generation_events_any_project(generation_id)
    if project_id:
        return subjects.project_events(project_id)
    return subjects.ALL_EVENTS


async def subscribe(
    nc: NATS,
    *,
    project_id: str | None = None,
    generation_id: str | None = None,
    since: int | datetime | None = None,
    types: Iterable[str | type[Event]] | None = None,
) -> AsyncIterator[Received]:
    """Kiln's events as they are stored, in stream order, forever (until the caller stops).

    - `project_id` / `generation_id` narrow the subscription to one project or generation.
    - `since` is where to start: a stream sequence (the events *after* it: pass the last
      `Received.stream_seq` you handled to resume), or a datetime (the events stored at or
      after it; a naive one is taken as UTC). `None` means the whole log for one generation, and only new events when
      following a project or everything.
    - `types` keeps only these event types (dotted tags or classes); the others are read
      and skipped.

    Events that do not decode as any Kiln event are skipped with a warning. The iterator
    ends when the connection is closed; break out of it (or cancel the task) to stop.
    """
    js = nc.jetstream()
    wanted = {t if isinstance(t, str) else event_tag(t) for t in types} if types else None
    floor = 0  # deliver only stream sequences above this (a reset never repeats events)
    after_time: datetime | None = None
    if isinstance(since, datetime):
        after_time = since if since.tzinfo else since.replace(tzinfo=UTC)
    elif since is not None:
        floor = max(int(since), 0)
    elif generation_id is None:
        floor = int((await js.stream_info(streams.EVENTS_STREAM)).state.last_seq)
    sub = await subscribe_ordered(
        js,
        subject_filter(project_id, generation_id),
        after_stream_seq=floor,
        start_time=after_time,
        idle_heartbeat_s=HEARTBEAT_S,
        inactive_threshold_s=None,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=None)
            except nats.errors.ConnectionClosedError:
                return
            seq = int(msg.metadata.sequence.stream)
            if seq <= floor:
                continue
            floor = seq
            received = _received(msg)
            if received is None:
                continue
            if after_time is not None:
                # Only a consumer recreated before its first event replays older ones.
                if received.stored_at < after_time:
                    continue
                after_time = None
            if wanted is None or received.type in wanted:
                yield received
    finally:
        if not nc.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass


def _received(msg: Msg) -> Received | None:
    meta = msg.metadata
    try:
        event = decode_event(msg.data)
    except DecodeError as exc:
        log.warning(
            "Skipped an undecodable event on {subject}",
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            reason=exc.reason,
        )
        return None
    return Received(
        stream_seq=int(meta.sequence.stream),
        subject=msg.subject,
        stored_at=meta.timestamp,
        data=msg.data,
        event=event,
    )
