"""Appending events to one generation's JetStream subject.

Appends are guarded by the subject's last stream sequence
(`Nats-Expected-Last-Subject-Sequence`), so a second writer is refused by the stream
instead of interleaving its events, and carry `Nats-Msg-Id: <generation>:<seq>`, so a
retried publish is stored once. Each event carries its CloudEvents attributes as headers.

Several events can go in as one atomic batch (nats-server >= 2.12, a stream with
`allow_atomic`): all or none, one ack, the expected-sequence guard on the batch's first
message. Batches that several writers append at the same moment are committed together,
as one (`services/common/groupcommit.py`). Where the stream lacks atomic batches, a batch
is appended one event at a time, as before. Reading the log back is
`services/common/eventlog.py`.

It stays one module of about 450 lines: the single-event and the batch append share the
expected-sequence guard, the Msg-Id dedup and the lost-ack check, and splitting the
server's batch answers from the writer that acts on them would split one protocol.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Self, TypeVar, cast
from urllib.parse import quote

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from contracts import streams, subjects
from contracts.codec import encode, encoded_event_hash, event_hash
from contracts.events import Event, event_tag, new_event_id, utc_now
from services.common.broker import BrokerUnavailable, says_not_now
from services.common.eventlog import StoredEvent
from services.common.groupcommit import (
    ATOMIC_TOO_LARGE,
    BatchMiscounted,
    GroupRefused,
    commit_groups,
    limit_in,
    publish_atomic,
)
from services.common.logs import get_logger

log = get_logger(__name__)

WRONG_LAST_SEQUENCE = 10071
E = TypeVar("E", bound=Event)


class WriterConflict(RuntimeError):
    """Another writer appended to the generation's subject: this one must stop."""


class LogUnavailable(BrokerUnavailable):
    """The broker did not take an append after retrying for a while."""


def source_uri(role: str, instance: str = "") -> str:
    """The CloudEvents `source` of a writer, an absolute URI: `urn:kiln:orchestrator:host:1234`."""
    return ":".join(
        ["urn:kiln", quote(role, safe=""), *([quote(instance, safe=":")] if instance else [])]
    )


def cloudevents_headers(
    event: Event, source: str, into: dict[str, str] | None = None
) -> dict[str, str]:
    """CloudEvents binary-mode attributes for an event, as NATS headers (the NATS protocol
    binding: every attribute a `ce-` header; `content-type` too, for plain NATS clients);
    added to `into` (after the headers it has) when given."""
    headers = {} if into is None else into
    headers["ce-specversion"] = "1.0"
    headers["ce-id"] = event.event_id
    headers["ce-source"] = source
    headers["ce-type"] = _ce_type(type(event))
    headers["ce-time"] = event.at.isoformat().replace("+00:00", "Z")
    headers["ce-subject"] = event.generation_id
    headers["ce-datacontenttype"] = "application/json"
    headers["content-type"] = "application/json"
    return headers


_ce_types: dict[type[Event], str] = {}


def _ce_type(event_type: type[Event]) -> str:
    """`kiln.<tag>`, the CloudEvents type of an event class (made once per class)."""
    found = _ce_types.get(event_type)
    if found is None:
        found = _ce_types[event_type] = f"kiln.{event_tag(event_type)}"
    return found


# What nats-server answers about atomic batches (server/errors.json).
ATOMIC_DISABLED = 10174  # the stream has no allow_atomic
ATOMIC_INCOMPLETE = 10176  # a message of the batch never arrived, or it timed out (10 s)
ATOMIC_DUPLICATE = 10201  # a Nats-Msg-Id of the batch is already stored
ATOMIC_TOO_MANY_INFLIGHT = 10210  # 50 open batches per stream, 1,000 per server
# nats-server's default max_batch_size (streamDefaultMaxAtomicBatchSize, server/stream.go);
# an operator's lower `jetstream { limits { max_batch_size } }` is learnt from its refusal.
MAX_BATCH_EVENTS = 1000
# Kiln's own bound on the bytes of one batch (the server has none besides max_payload per
# message): a phase of large files goes in as several batches of at most this much.
MAX_BATCH_BYTES = 8 * 1024 * 1024
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)
_atomic_streams: weakref.WeakKeyDictionary[Client, bool] = weakref.WeakKeyDictionary()


def _client(js: JetStreamContext) -> Client:
    # nats-py 2.x keeps a JetStream context's connection in a private field.
    return cast(Client, js._nc)


async def atomic_batches(js: JetStreamContext, *, refresh: bool = False) -> bool:
    """Whether the events stream takes atomic batches (its `allow_atomic`), asked once per
    connection (and logged): the orchestrator asks at start-up, every writer reuses it."""
    nc = _client(js)
    known = _atomic_streams.get(nc)
    if known is not None and not refresh:
        return known
    try:
        info = await js.stream_info(streams.EVENTS_STREAM)
    except NotFoundError:
        return False
    atomic = bool(info.config.allow_atomic)
    _atomic_streams[nc] = atomic
    if atomic:
        log.info(
            "Events stream takes atomic batches: a phase is appended as one unit",
            server_version=str(nc.connected_server_version),
        )
    else:
        log.warning(
            "Events stream has no atomic batch publish (nats-server {server_version}); "
            "appending one event at a time",
            server_version=str(nc.connected_server_version),
        )
    return atomic


def _without_atomic(js: JetStreamContext) -> None:
    """Remember that the events stream refused an atomic batch (its config changed)."""
    _atomic_streams[_client(js)] = False
    log.warning("Events stream refused an atomic batch; appending one event at a time")


class GenerationWriter:
    """Appends events to one generation's subject, numbering and chaining them.

    `atomic` says whether batches go in atomically; None asks the stream (`atomic_batches`).
    `appended` is called with each event once the stream holds it (a subclass folds it).
    """

    def __init__(
        self,
        js: JetStreamContext,
        project_id: str,
        generation_id: str,
        *,
        source: str,
        last_seq: int = 0,
        last_stream_seq: int = 0,
        last_data: bytes | None = None,
        retry_for_s: float = 60.0,
        atomic: bool | None = None,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.js = js
        self.project_id = project_id
        self.generation_id = generation_id
        self.subject = subjects.generation_events(project_id, generation_id)
        self.source = source
        self.last_seq = last_seq
        self.last_stream_seq = last_stream_seq
        self.last_data = last_data
        self.retry_for_s = retry_for_s
        self.atomic = atomic
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self._hashed_data: bytes | None = None
        self._hash = ""
        self._hash_of: Event | None = None
        """The event whose bytes are `_hashed_data`, while its hash is not needed yet."""

    @classmethod
    def after(
        cls, js: JetStreamContext, history: list[StoredEvent], *, source: str, **kwargs: Any
    ) -> Self:
        """A writer that continues a generation whose log so far is `history` (non-empty)."""
        last = history[-1]
        return cls(
            js,
            last.event.project_id,
            last.event.generation_id,
            source=source,
            last_seq=last.event.seq,
            last_stream_seq=last.stream_seq,
            last_data=last.data,
            **kwargs,
        )

    def build(self, event_type: type[E], /, **fields: Any) -> E:
        """The next event of this generation, numbered and chained, not yet published."""
        return self._build(event_type, self.last_seq + 1, self._last_hash(), fields)

    def _build(self, event_type: type[E], seq: int, prev_hash: str, fields: dict[str, Any]) -> E:
        return event_type(
            event_id=new_event_id(),
            generation_id=self.generation_id,
            project_id=self.project_id,
            seq=seq,
            at=utc_now(),
            prev_hash=prev_hash,
            **fields,
        )

    def batch(self) -> EventBatch:
        """An empty batch of events that follow this writer's last one."""
        return EventBatch(self)

    def _last_hash(self) -> str:
        if not self.last_data:
            return ""
        if self._hashed_data is not self.last_data:
            self._hash = event_hash(self.last_data)
            self._hashed_data, self._hash_of = self.last_data, None
        elif self._hash_of is not None:
            self._hash = encoded_event_hash(self._hash_of)
            self._hash_of = None
        return self._hash

    async def emit(self, event_type: type[E], /, **fields: Any) -> E:
        """Build the next event and append it; WriterConflict if another writer got there."""
        event = self.build(event_type, **fields)
        await self.append(event)
        return event

    async def append(self, event: Event) -> StoredEvent:
        """Append a built event (its seq must be `last_seq + 1`)."""
        assert event.seq == self.last_seq + 1, "events are appended in order"
        data = encode(event)
        msg_id = self._msg_id(event)
        headers = cloudevents_headers(
            event,
            self.source,
            into={
                "Nats-Msg-Id": msg_id,
                "Nats-Expected-Last-Subject-Sequence": str(self.last_stream_seq),
            },
        )
        stream_seq = await self._publish(data, headers, msg_id)
        return self._stored(event, data, stream_seq)

    async def append_batch(self, events: Sequence[Event]) -> list[StoredEvent]:
        """Append built events (numbered from `last_seq + 1` and chained, see `batch()`)
        as one atomic batch: all or none, one ack. A batch over the server's limits goes
        in as several, each atomic and guarded by the last sequence of the one before; a
        stream without atomic batches takes them one at a time. WriterConflict if another
        writer appended first; a retried batch whose ack was lost is stored once."""
        if not events:
            return []
        if len(events) == 1:
            # One message is stored whole or not at all anyway: the guarded single append
            # spares the server an atomic batch's staging (on a one-replica file stream,
            # a store of its own on disk per batch).
            return [await self.append(events[0])]
        assert [e.seq for e in events] == list(
            range(self.last_seq + 1, self.last_seq + 1 + len(events))
        ), "events are appended in order"
        stored: list[StoredEvent] = []
        pending = [(event, encode(event)) for event in events]
        while pending:
            if self.atomic is None:
                self.atomic = await atomic_batches(self.js)
            if not self.atomic:
                for event, _ in pending:
                    stored.append(await self.append(event))
                return stored
            chunk = self._chunk(pending)
            done = await self._append_atomic(chunk)
            stored += done
            pending = pending[len(done) :]
        return stored

    def _chunk(self, pending: list[tuple[Event, bytes]]) -> list[tuple[Event, bytes]]:
        """The longest head of `pending` within the batch limits (at least one event)."""
        size = 0
        for count, (_, data) in enumerate(pending[: self.max_batch_events]):
            size += len(data)
            if count and size > self.max_batch_bytes:
                return pending[:count]
        return pending[: self.max_batch_events]

    def _msg_id(self, event: Event) -> str:
        return f"{self.generation_id}:{event.seq}"

    def _stored(self, event: Event, data: bytes, stream_seq: int) -> StoredEvent:
        self.last_seq = event.seq
        self.last_stream_seq = stream_seq
        self.last_data = data
        # Hashed when the next event is built: of a batch's events only the last is asked.
        self._hashed_data, self._hash_of = data, event
        stored = StoredEvent(stream_seq, data, event)  # type: ignore[arg-type]
        self.appended(stored)
        return stored

    def appended(self, stored: StoredEvent) -> None:
        """Called with each event once the stream holds it (nothing to do here)."""

    async def _append_atomic(self, chunk: list[tuple[Event, bytes]]) -> list[StoredEvent]:
        """Append `chunk` as one atomic batch; the events stored (none when the stream
        turned out not to take batches, fewer when the server's limit is lower)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for_s
        delay = 0.1
        last_event, last_data = chunk[-1]
        alone = False
        while True:
            try:
                last_stream_seq = await self._publish_batch(chunk, alone=alone)
                break
            except GroupRefused:
                # The group's refusal may be another member's doing: this batch alone
                # tells, at once.
                alone = True
                continue
            except BatchMiscounted as exc:
                raise LogUnavailable(
                    f"generation {self.generation_id}: a batch of {exc.sent} events was "
                    f"acknowledged as {exc.acknowledged}"
                ) from None
            except APIError as exc:
                if says_not_now(exc):  # JetStream's 503 (an election) is an APIError
                    error: Exception = exc
                elif exc.err_code in (WRONG_LAST_SEQUENCE, ATOMIC_DUPLICATE):
                    # Either our own earlier attempt was stored (its ack was lost) or
                    # another writer appended: the subject's last message tells which.
                    stored = await self._stored_as(self._msg_id(last_event), last_data)
                    if stored is None:
                        raise WriterConflict(
                            f"another writer appended to generation {self.generation_id}"
                        ) from None
                    last_stream_seq = stored
                    break
                elif exc.err_code == ATOMIC_DISABLED:
                    _without_atomic(self.js)
                    self.atomic = False
                    return []
                elif exc.err_code == ATOMIC_TOO_LARGE:
                    limit = limit_in(exc.description)
                    if limit is None or limit >= len(chunk):
                        raise
                    self.max_batch_events = max(limit, 1)
                    return await self._append_atomic(chunk[: self.max_batch_events])
                elif exc.err_code in (ATOMIC_INCOMPLETE, ATOMIC_TOO_MANY_INFLIGHT):
                    error = exc
                else:
                    raise
            except _RETRYABLE as exc:
                error = exc
            if loop.time() > deadline:
                raise LogUnavailable(
                    f"could not append to generation {self.generation_id}: {error!r}"
                )
            log.warning(
                "Batch append to generation {generation_id} not acknowledged; retrying",
                generation_id=self.generation_id,
                events=len(chunk),
                error=repr(error),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        # A batch is stored contiguously: the single server commits it under the stream's
        # isolation lock, a cluster proposes it as one multi-entry.
        first = last_stream_seq - len(chunk) + 1
        return [
            self._stored(event, data, first + index) for index, (event, data) in enumerate(chunk)
        ]

    async def _publish_batch(self, chunk: list[tuple[Event, bytes]], *, alone: bool) -> int:
        """Commit `chunk` as one atomic batch, in a group with other writers' batches of
        the moment unless `alone` (`groupcommit`); the stream seq of its last message."""
        generation_id, source = self.generation_id, self.source
        messages = [
            (
                data,
                cloudevents_headers(
                    event, source, into={"Nats-Msg-Id": f"{generation_id}:{event.seq}"}
                ),
            )
            for event, data in chunk
        ]
        messages[0][1]["Nats-Expected-Last-Subject-Sequence"] = str(self.last_stream_seq)
        if alone:
            return await publish_atomic(self.js, [(self.subject, messages)])
        groups = commit_groups(
            self.js, max_messages=self.max_batch_events, max_bytes=self.max_batch_bytes
        )
        return await groups.commit(self.subject, messages)

    async def _publish(self, data: bytes, headers: dict[str, str], msg_id: str) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for_s
        delay = 0.1
        while True:
            try:
                ack = await self.js.publish(self.subject, data, headers=headers, timeout=5.0)
                if ack.duplicate and not await self._holds(int(ack.seq), data):
                    # Same Msg-Id, other bytes: another writer stored this seq first.
                    raise WriterConflict(
                        f"another writer appended to generation {self.generation_id}"
                    )
                return int(ack.seq)
            except APIError as exc:
                if says_not_now(exc):
                    error: Exception = exc
                elif exc.err_code == WRONG_LAST_SEQUENCE:
                    # Either our own earlier attempt was stored (its ack was lost) or
                    # another writer appended: the subject's last message tells which.
                    stored = await self._stored_as(msg_id, data)
                    if stored is not None:
                        return stored
                    raise WriterConflict(
                        f"another writer appended to generation {self.generation_id}"
                    ) from None
                else:
                    raise
            except _RETRYABLE as exc:
                error = exc
            if loop.time() > deadline:
                raise LogUnavailable(
                    f"could not append to generation {self.generation_id}: {error!r}"
                ) from None
            # The broker says "not now" (electing a leader, reconnecting): waiting is the
            # plan, not an error; LogUnavailable above is the error.
            log.info(
                "Waiting for the broker to take an event of generation {generation_id}",
                generation_id=self.generation_id,
                error=repr(error),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _stored_as(self, msg_id: str, data: bytes) -> int | None:
        """The stream seq of this very event if it is the subject's last message."""
        try:
            last = await self.js.get_last_msg(streams.EVENTS_STREAM, self.subject)
        except NotFoundError:
            return None
        if last.headers and last.headers.get("Nats-Msg-Id") == msg_id and last.data == data:
            return int(last.seq or 0)
        return None

    async def _holds(self, stream_seq: int, data: bytes) -> bool:
        """True when the stream's message at `stream_seq` is exactly `data`."""
        try:
            stored = await self.js.get_msg(streams.EVENTS_STREAM, stream_seq)
        except NotFoundError:
            return False
        return stored.data == data


class EventBatch:
    """Events to append together, numbered after the writer's last one and each chained to
    the one before it. `add` builds the next event; `append` appends them all."""

    def __init__(self, writer: GenerationWriter) -> None:
        self.writer = writer
        self.events: list[Event] = []
        self._first_seq = writer.last_seq + 1
        self._last_hash = writer._last_hash()

    def add(self, event_type: type[E], /, **fields: Any) -> E:
        """Build the batch's next event (not yet published) and add it."""
        event = self.writer._build(
            event_type, self._first_seq + len(self.events), self._last_hash, fields
        )
        self.events.append(event)
        self._last_hash = encoded_event_hash(event)
        return event

    def __len__(self) -> int:
        return len(self.events)

    async def append(self) -> list[StoredEvent]:
        """Append the batch (see `GenerationWriter.append_batch`); the events as stored."""
        return await self.writer.append_batch(self.events)
