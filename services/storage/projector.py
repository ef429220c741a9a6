"""The projector: events from the stream, applied to SQL exactly once and in order.

Each batch is one transaction that also records the consumer's position (the highest
stream sequence below which every message is handled), and messages are acked only after
it commits: a redelivered message at or below the position is recognised and skipped.
A message at or below its generation's `last_stream_seq` is skipped too, so replaying
events already applied (a new partitioning starting before another's position) is safe.

Order matters (a generation's state is a fold), so a message is applied only when every
message between the position and it is handled. A gap (an earlier message failed, or was
lost in flight and awaits redelivery) is checked against the stream: if a message really
is missing, the later ones wait (`Retry`) instead of jumping ahead of it.

With `partitions` > 1, several projectors share the database, each with its own consumer
and position: every projector reads every event (so the gap check still sees every
sequence) and applies only those of its partition's projects, acking the others as handled.

A generation's row is the summary `contracts.state.apply` folds (the fold the orchestrator
and the gateway use too), mapped by `services.storage.rows`; its file rows are the fold's
file set. This module only stores what the fold returns.

Batches pass a pipeline (`PullWorker.run_batches`), each stage on a different batch:
while batch N's transaction waits on the database, batch N+1 is fetched and prepared
(`prepare`: decoded, checked, its audit rows bound for the database, yielding to the event
loop every few dozen messages so that N's statements are followed up at once), and batch
N-1's messages are acked. What keeps this safe: only pure work is done ahead (N+1 is
folded and written only in its own transaction, after N committed, from the position N
left), and a batch is settled only after its transaction ended, batches in order. If N
fails, N+1 finds N's sequences missing and waits for them (`Retry`), as any later batch
would. The position is kept in memory between batches (no read per transaction) and moved
with a compare-and-set (`advance_position`): should anything else have moved it, the batch
is rolled back and retried from the position read afresh.

This module orders batches and keeps the position; its parts: `validation` (a message
decoded and checked, no database), `writer` (a batch applied in one transaction),
`rows` (summary ↔ row), `bulk` (many rows per statement), `positions` (where each consumer
stands) and `dberrors` (an event's fault or the database's). It stays one module of about
480 lines: the pipeline's stages (prepare, handle, the gap check) share the position and
the caches of recent generations and held blobs, which split modules would only pass back
and forth.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import subjects
from contracts.events import AnyEvent
from contracts.streams import EVENTS_STREAM, STORAGE_CONSUMER
from services.common import metrics
from services.common.blobs import BlobError, BlobStore
from services.common.consumer import Ack, DeadLetter, Outcome, Retry
from services.common.eventlog import stream_seq
from services.common.logs import get_logger
from services.storage.dberrors import describe_error, is_refused
from services.storage.models import (
    positions_table,
)
from services.storage.positions import (
    PositionMoved,
    advance_position,
    covered_position,
    read_position,
    write_position,
)
from services.storage.validation import (
    Decoded,
    audit_binder,
    decode_message,
    names_content,
    with_content,
    with_held_content,
)
from services.storage.writer import BatchWriter, LoadedGeneration

log = get_logger(__name__)

HOLD_RETRY_S = 1.0
PREPARE_CHUNK = 50
"""Messages decoded between two yields to the event loop (~1-2 ms of work)."""
CACHED_GENERATIONS = 64
"""Generations whose folded state and file rows stay in memory between batches, so a
long generation arriving in many small batches is not reloaded from SQL for each."""
HELD_BLOBS = 50_000
"""Blobs (sha256 → size) a committed batch stored or found in the read model, least
recently used first out (~150 bytes each): a `file.written` naming one of them is not read
from the broker, checked and stored again (the files most versions share)."""


class Projector:
    """Applies batches of events to the read model; plug `handle` into `PullWorker.run_batches`.

    `js` is used to tell a real gap in the stream (a message still to come) from deleted
    sequences; without it, gaps are trusted to be empty. `partition` of `partitions`
    chooses the projects this projector applies (`contracts.subjects.partition_of`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        consumer: str = STORAGE_CONSUMER,
        js: JetStreamContext | None = None,
        stream: str = EVENTS_STREAM,
        partition: int = 0,
        partitions: int = 1,
    ) -> None:
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} is not one of 0..{partitions - 1}")
        self.engine = engine
        self.partition = partition
        self.partitions = partitions
        self.consumer = consumer
        self.js = js
        self.blobs = BlobStore(js) if js is not None else None
        self.stream = stream
        self.batches = 0
        self.failed_batches = 0
        self.events_applied = 0
        self.events_skipped = 0
        self.events_of_other_partitions = 0
        self.dead_letters = 0
        self.last_applied_stream_seq = 0
        self.start_position = 0
        """Where this consumer starts before it has a position of its own (see `position`)."""
        self.apply_seconds = 0.0
        self.cache_hits = 0
        self._cache: OrderedDict[str, LoadedGeneration] = OrderedDict()
        """Generations as the last committed batch left them (state and file rows)."""
        self._held_blobs: OrderedDict[str, int] = OrderedDict()
        """sha256 → size of blobs the read model holds, as committed batches saw (the
        writer checks them again in the batch's transaction, with one query)."""
        self.blobs_reused = 0
        self._audit_row = audit_binder(engine.dialect)
        self._committed: int | None = None
        """The position this projector's last batch committed (its row exists), or None
        when it must be read (at start, and after a batch failed)."""

    async def position(self) -> int:
        """The stream sequence this consumer has applied up to.

        A consumer without a position yet (a new database, or a new partitioning) starts
        where everything before is applied: for each earlier set of storage consumers, the
        lowest position of its partitions (one that never ran counts as 0), and of those
        sets the highest. Events after that point that an earlier set applied anyway are
        skipped by their generation's `last_stream_seq`.
        """
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(positions_table.c.consumer, positions_table.c.stream_seq))
            ).all()
        positions = {str(row.consumer): int(row.stream_seq) for row in rows}
        if self.consumer in positions:
            return positions[self.consumer]
        start = self.start_position = covered_position(positions)
        if start:
            log.info(
                "Consumer {consumer} is new; it starts after stream seq {position}, "
                "up to which earlier storage consumers applied every event",
                consumer=self.consumer,
                position=start,
                earlier=", ".join(sorted(positions)),
            )
        return start

    async def prepare(self, msgs: list[Msg]) -> list[Decoded | None]:
        """Decode and check a batch before its transaction (no database involved), so that
        the next batch can be prepared while the database commits this one.

        One entry per message, in the order given; None for another partition's message.
        It yields to the event loop every PREPARE_CHUNK messages, so that the transaction
        of the batch before, waiting on the database, goes on as soon as each of its
        statements ends instead of after the whole decoding.
        """
        prepared: list[Decoded | None] = []
        for start in range(0, len(msgs), PREPARE_CHUNK):
            if start:
                await asyncio.sleep(0)
            prepared += [
                decode_message(msg, self._audit_row) if self._owns(msg.subject) else None
                for msg in msgs[start : start + PREPARE_CHUNK]
            ]
        return await self._read_named_contents(prepared)

    async def _read_named_contents(self, prepared: list[Decoded | None]) -> list[Decoded | None]:
        """Each `file.written` that names its content by sha256, with that content read
        from the blob stream (all of the batch's at once); dead-lettered where it cannot be.
        A content the read model already holds (`_held_blobs`) is not read: the event is
        marked `held`, its size checked against the blob's."""
        shas = [names_content(d) for d in prepared]
        named = {sha for sha in shas if sha is not None}
        if not named:
            return prepared
        held = {sha: size for sha in named if (size := self._held_size(sha)) is not None}
        contents: dict[str, str] = {}
        missing: dict[str, str] = {}
        wanted = named.difference(held)
        if wanted and self.blobs is None:
            missing = dict.fromkeys(wanted, "this projector has no blob store")
        elif wanted and self.blobs is not None:
            for name, result in (await self.blobs.get_each(wanted)).items():
                if isinstance(result, BlobError):
                    missing[name] = str(result)
                else:
                    contents[name] = result
        filled: list[Decoded | None] = []
        for decoded, named_sha in zip(prepared, shas, strict=True):
            if named_sha is None or decoded is None:
                filled.append(decoded)
            elif named_sha in held:
                filled.append(with_held_content(decoded, held[named_sha]))
                self.blobs_reused += 1
            else:
                filled.append(
                    with_content(decoded, contents.get(named_sha), missing.get(named_sha, ""))
                )
        return filled

    def _held_size(self, sha256: str) -> int | None:
        size = self._held_blobs.get(sha256)
        if size is not None:
            self._held_blobs.move_to_end(sha256)
        return size

    def _hold_blobs(self, sizes: dict[str, int]) -> None:
        _remember_recent(self._held_blobs, sizes, HELD_BLOBS)

    async def handle(
        self, msgs: list[Msg], prepared: list[Decoded | None] | None = None
    ) -> list[Outcome]:
        """Apply a batch in one transaction; one outcome per message, in the order given.

        `prepared` is what `prepare` returned for `msgs`, if it was called ahead.
        """
        started = time.perf_counter()
        if prepared is None:
            prepared = await self.prepare(msgs)
        try:
            try:
                result = await self._run(msgs, prepared, careful=False)
            except Exception as exc:
                if not is_refused(exc):
                    raise
                log.warning(
                    "A batch of {count} events could not be stored ({error}); "
                    "storing it event by event",
                    count=len(msgs),
                    error=describe_error(exc),
                )
                result = await self._run(msgs, prepared, careful=True)
        except Exception as exc:
            self._committed = None
            # Whatever the failure, held blobs are taken on the database's word again.
            self._held_blobs.clear()
            if isinstance(
                exc, OSError | TimeoutError | OperationalError | InterfaceError | PositionMoved
            ):
                log.warning(
                    "The database failed a batch of {count} events ({error}); it will be retried",
                    count=len(msgs),
                    error=describe_error(exc),
                )
            else:
                log.exception(
                    "Projecting a batch of {count} events failed; it will be retried",
                    count=len(msgs),
                )
            self.failed_batches += 1
            return [Retry(f"database error: {describe_error(exc)}")] * len(msgs)

        elapsed = time.perf_counter() - started
        self.batches += 1
        self.apply_seconds += elapsed
        self.events_applied += sum(result.applied.values())
        self.events_skipped += result.skipped + result.already_applied
        self.events_of_other_partitions += result.other_partitions
        self.dead_letters += sum(isinstance(o, DeadLetter) for o in result.outcomes.values())
        self.last_applied_stream_seq = max(self.last_applied_stream_seq, result.position)
        metrics.storage_batch_size.observe(len(msgs))
        metrics.storage_apply_seconds.observe(elapsed)
        metrics.storage_events.inc(sum(result.applied.values()))
        metrics.storage_applied_seq.set(self.last_applied_stream_seq)
        for generation_id, count in result.applied.items():
            log.info(
                "Projected {count} events of generation {generation_id}",
                count=count,
                generation_id=generation_id,
                stream_seq=result.last_seq_of[generation_id],
            )
        return [result.outcomes[i] for i in range(len(msgs))]

    async def _run(
        self, msgs: list[Msg], prepared: list[Decoded | None], *, careful: bool
    ) -> _BatchResult:

        result = _BatchResult()
        async with self.engine.begin() as conn:
            known = self._committed
            position = known if known is not None else await read_position(conn, self.consumer)
            row_exists = position is not None
            if position is None:
                position = self.start_position
            result.position = position
            todo = await self._plan(msgs, position, result)
            writer = BatchWriter(conn, self.blobs)
            events = [
                decoded.event
                for decoded in (prepared[index] for index, _, _ in todo)
                if decoded is not None and decoded.event is not None
            ]
            self.cache_hits += await writer.preload(events, self._take_cached(events))
            for index, msg, seq in todo:
                decoded = prepared[index]
                if decoded is None:
                    result.outcomes[index] = Ack()
                    result.other_partitions += 1
                    continue
                if careful:
                    outcome = await self._apply_guarded(writer, msg, decoded, seq)
                else:
                    outcome = await writer.apply(decoded, seq)
                    if isinstance(outcome, DeadLetter):
                        await writer.seen(msg.subject, seq)
                result.outcomes[index] = outcome
                if isinstance(outcome, Ack) and writer.generation_id is not None:
                    result.applied[writer.generation_id] += 1
                    result.last_seq_of[writer.generation_id] = seq
            await writer.flush()
            result.already_applied = writer.already_applied
            if todo:
                result.position = todo[-1][2]
                if known is not None:
                    await advance_position(conn, self.consumer, result.position, was=known)
                else:
                    await write_position(conn, self.consumer, result.position)
                row_exists = True
        # Committed: what the batch folded is what the database holds.
        self._remember(writer.generations)
        self._hold_blobs(writer.stored_blobs)
        self._committed = result.position if row_exists else None
        return result

    def _take_cached(self, events: list[AnyEvent]) -> dict[str, LoadedGeneration]:
        """The cached generations `events` touch, for the writer to reuse those whose row
        has not moved since (another projector, during a change of partitioning, may have
        applied events to them). They leave the cache: a batch that fails takes them with
        it, and only a committed batch puts them back."""
        wanted = {event.generation_id for event in events}
        return {gid: self._cache.pop(gid) for gid in wanted if gid in self._cache}

    def _remember(self, generations: dict[str, LoadedGeneration]) -> None:
        _remember_recent(self._cache, generations, CACHED_GENERATIONS)

    def _owns(self, subject: str) -> bool:
        return (
            self.partitions == 1
            or subjects.event_partition(subject, self.partitions) == self.partition
        )

    async def _apply_guarded(
        self, writer: BatchWriter, msg: Msg, decoded: Decoded, seq: int
    ) -> Outcome:
        """One message in its own savepoint: if it cannot be stored, it alone is dead-lettered."""
        try:
            async with writer.conn.begin_nested():
                outcome = await writer.apply(decoded, seq)
                await writer.flush()
        except Exception as exc:
            if not is_refused(exc):
                raise
            writer.forget()
            outcome = DeadLetter(f"the event could not be stored: {describe_error(exc)}")
        if isinstance(outcome, DeadLetter):
            try:
                async with writer.conn.begin_nested():
                    await writer.seen(msg.subject, seq)
                    await writer.flush()
            except Exception as exc:
                if not is_refused(exc):
                    raise
                writer.forget()
        return outcome

    async def _plan(
        self, msgs: list[Msg], position: int, result: _BatchResult
    ) -> list[tuple[int, Msg, int]]:
        """The messages to apply now, in stream order; the others' outcomes go in `result`."""
        todo: list[tuple[int, Msg, int]] = []
        taken: set[int] = set()
        expected = position + 1
        waiting_for: int | None = None
        ordered = sorted((stream_seq(msg), index, msg) for index, msg in enumerate(msgs))
        for seq, index, msg in ordered:
            if seq <= position or seq in taken:
                result.outcomes[index] = Ack()
                result.skipped += 1
                continue
            if waiting_for is None and seq > expected and not await self._gap_empty(expected, seq):
                waiting_for = expected
                log.warning(
                    "Stream seq {missing} is not projected yet; later events wait for it",
                    missing=expected,
                    held_from=seq,
                    consumer=self.consumer,
                )
            if waiting_for is not None:
                result.outcomes[index] = Retry(
                    f"waiting for stream seq {waiting_for} to be projected first",
                    delay_s=HOLD_RETRY_S,
                )
                continue
            taken.add(seq)
            todo.append((index, msg, seq))
            expected = seq + 1
        return todo

    async def _gap_empty(self, first: int, before: int) -> bool:
        """True when the stream holds no event with a sequence in [first, before)."""
        if self.js is None:
            return True
        try:
            found = await self.js.get_msg(
                self.stream, seq=first, subject=subjects.ALL_EVENTS, next=True
            )
        except NotFoundError:
            return True
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("Could not look into the stream: {error}", error=repr(exc))
            return False
        return int(found.seq or 0) >= before


@dataclass
class _BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    last_seq_of: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    already_applied: int = 0
    other_partitions: int = 0
    position: int = 0


K = TypeVar("K")
V = TypeVar("V")


def _remember_recent(recent: OrderedDict[K, V], items: dict[K, V], limit: int) -> None:
    """Put `items` in the LRU `recent` as the newest, dropping the oldest past `limit`."""
    for key, value in items.items():
        recent[key] = value
        recent.move_to_end(key)
    while len(recent) > limit:
        recent.popitem(last=False)
