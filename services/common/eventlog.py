"""Reading one generation's events, or any subject of the streams, in order.

The log is the source of truth: the orchestrator rebuilds a generation from it to resume,
the gateway serves it to late clients. Every read goes through `subscribe_ordered`, an
ordered consumer; appending is `services/common/eventwriter.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RawStreamMsg
from nats.js.errors import NotFoundError

from contracts import streams, subjects
from contracts.codec import DecodeError, decode_event
from contracts.events import AnyEvent
from services.common.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the stream holds it: its stream sequence, raw bytes and decoded value."""

    stream_seq: int
    data: bytes
    event: AnyEvent


def stream_seq(msg: Msg) -> int:
    """A JetStream message's stream sequence. Read from its reply subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…`) when it has the usual nine
    tokens, without building the whole `msg.metadata` (timestamp included), which was a
    fifth of decoding a projector's batch and 7 % of a gateway's replay; from the metadata
    otherwise."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


ACK_TOKENS = 9


async def last_stream_seq(js: JetStreamContext, generation_id: str) -> int:
    """The stream sequence of a generation's last event (0 if it has none)."""
    last = await _last_message(js, generation_id)
    return int(last.seq or 0) if last is not None else 0


async def last_event(js: JetStreamContext, generation_id: str) -> StoredEvent | None:
    """A generation's last event as stored, or None (no events, or one that does not decode)."""
    return _stored(await _last_message(js, generation_id))


async def first_event(js: JetStreamContext, generation_id: str) -> StoredEvent | None:
    """A generation's first event as stored (its `generation.requested`), or None (no
    events, or one that does not decode).

    Asked of any replica first (a direct get: the fast path, and the usual answer), then,
    when that one has nothing, of the stream's leader: a replica that has not caught up (one
    just back from a partition) answers "not found" for a generation that exists, and the
    gateway would take that for "not yet requested". When the leader cannot be asked (the
    replica is cut off, leaders are being elected), its "not now" error is raised: whether
    the generation exists is then not known, and None would say it does not.
    """
    subject = subjects.generation_events_any_project(generation_id)
    try:
        first = await js.get_msg(
            streams.EVENTS_STREAM, seq=1, subject=subject, direct=True, next=True
        )
    except NotFoundError:
        try:
            first = await js.get_msg(
                streams.EVENTS_STREAM, seq=1, subject=subject, direct=False, next=True
            )
        except NotFoundError:
            return None
        log.info(
            "A replica had not caught up with generation {generation_id}; "
            "read its first event from the stream's leader",
            generation_id=generation_id,
        )
    return _stored(first)


def _stored(msg: RawStreamMsg | None) -> StoredEvent | None:
    """The event a stored message holds, or None (no message, or one that does not decode)."""
    if msg is None or not msg.data:
        return None
    try:
        return StoredEvent(int(msg.seq or 0), msg.data, decode_event(msg.data))
    except DecodeError:
        return None


async def _last_message(js: JetStreamContext, generation_id: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg(
            streams.EVENTS_STREAM, subjects.generation_events_any_project(generation_id)
        )
    except NotFoundError:
        return None


async def subscribe_ordered(
    js: JetStreamContext,
    subject: str,
    *,
    after_stream_seq: int = 0,
    start_time: datetime | None = None,
    cb: Callable[[Msg], Awaitable[None]] | None = None,
    idle_heartbeat_s: float | None = None,
    inactive_threshold_s: float | None = 5.0,
    stream: str = streams.EVENTS_STREAM,
) -> JetStreamContext.PushSubscription:
    """The one way Kiln reads a subject: an ordered consumer (ephemeral, flow-controlled,
    recreated where it left off when the server loses it) from after `after_stream_seq`, or
    from `start_time`, with no client-side pending limits (a replay is read as fast as it
    arrives; its readers bound what they keep).

    nats-py is told where the consumer starts, and a recreated one starts by sequence: its
    ordered consumer otherwise remembers 0, so a reset before the first message (a broker
    restart) would replay the subject from its first message.
    """
    config = ConsumerConfig(inactive_threshold=inactive_threshold_s)
    if start_time is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = start_time.astimezone(UTC)
    elif after_stream_seq:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after_stream_seq + 1
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        cb=cb,
        config=config,
        idle_heartbeat=idle_heartbeat_s,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    # nats-py 2.x keeps an ordered consumer's position in private fields; this is the one
    # place that sets them (tests/common/test_eventlog.py covers a restart before the first
    # message).
    jsi = getattr(sub._sub, "_jsi", None)
    if jsi is not None:
        jsi._sseq = max(jsi._sseq, after_stream_seq)
        jsi._ccreq.opt_start_time = None
    return sub


async def read_subject(
    js: JetStreamContext,
    subject: str,
    *,
    after_stream_seq: int,
    upto_stream_seq: int,
    idle_timeout_s: float = 10.0,
) -> list[tuple[int, bytes]]:
    """Every message on `subject` after `after_stream_seq` up to `upto_stream_seq`, as
    (stream sequence, raw bytes), in order. TimeoutError when the stream stops answering
    for `idle_timeout_s` before the last one."""
    messages: list[tuple[int, bytes]] = []
    if upto_stream_seq <= after_stream_seq:
        return messages
    sub = await subscribe_ordered(js, subject, after_stream_seq=after_stream_seq)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s)
            except nats.errors.TimeoutError:
                raise TimeoutError(
                    f"{subject} stopped answering after {len(messages)} messages"
                ) from None
            seq = stream_seq(msg)
            messages.append((seq, msg.data))
            if seq >= upto_stream_seq:
                return messages
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def read_generation(
    js: JetStreamContext,
    generation_id: str,
    *,
    after_stream_seq: int = 0,
    idle_timeout_s: float = 10.0,
) -> list[StoredEvent]:
    """Every event of a generation after `after_stream_seq`, in order.

    Reads up to the last event that existed when the read began. Events that do not decode
    are skipped with a warning (they cannot have been written by Kiln; the audit's hash
    check reports them).
    """
    last = await _last_message(js, generation_id)
    target = int(last.seq or 0) if last is not None else 0
    if last is None or target <= after_stream_seq:
        return []
    if after_stream_seq == 0 and last.data:
        # A generation whose last event is its first (one just requested) has only that
        # one: no consumer to create, read and delete.
        with contextlib.suppress(DecodeError):
            only = decode_event(last.data)
            if only.seq == 1:
                return [StoredEvent(target, last.data, only)]
    raw = await read_subject(
        js,
        subjects.generation_events_any_project(generation_id),
        after_stream_seq=after_stream_seq,
        upto_stream_seq=target,
        idle_timeout_s=idle_timeout_s,
    )
    events: list[StoredEvent] = []
    for seq, data in raw:
        try:
            events.append(StoredEvent(seq, data, decode_event(data)))
        except DecodeError as exc:
            log.warning(
                "Skipped an undecodable event of generation {generation_id}",
                generation_id=generation_id,
                stream_seq=seq,
                reason=exc.reason,
            )
    return events


async def follow_new(
    js: JetStreamContext,
    subject: str,
    stream: str,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    idle_heartbeat_s: float = 1.0,
) -> JetStreamContext.PushSubscription:
    """An ordered consumer delivering every message on `subject` published from now on.

    Two missed heartbeats (`idle_heartbeat_s` each) makes the client recreate the consumer
    where it left off, so a broker restart costs seconds, not the 18 s of the defaults.
    """
    info = await js.stream_info(stream)
    return await subscribe_ordered(
        js,
        subject,
        stream=stream,
        after_stream_seq=int(info.state.last_seq),
        cb=cb,
        idle_heartbeat_s=idle_heartbeat_s,
        inactive_threshold_s=None,
    )
