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
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Insert, Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import subjects
from contracts.codec import DecodeError, audit_view, decode_event
from contracts.events import (
    AnyEvent,
    FileDeleted,
    FileWritten,
    GenerationRequested,
    event_tag,
)
from contracts.paths import PathRejected, safe_path
from contracts.state import FileState, GenerationState, GenerationSummary, apply, new_state
from contracts.streams import EVENTS_STREAM, STORAGE_CONSUMER
from services.common import metrics
from services.common.consumer import Ack, DeadLetter, Outcome, Retry
from services.common.logs import get_logger
from services.storage.models import (
    blobs_table,
    events_table,
    generation_files_table,
    generations_table,
    positions_table,
    projects_table,
)
from services.storage.rows import from_row, row_values

log = get_logger(__name__)

HOLD_RETRY_S = 1.0
CACHED_GENERATIONS = 64
"""Generations whose folded state and file rows stay in memory between batches, so a
long generation arriving in many small batches is not reloaded from SQL for each."""


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
        self.last_batch_seconds = 0.0
        self.cache_hits = 0
        self._cache: OrderedDict[str, _Generation] = OrderedDict()
        """Generations as the last committed batch left them (state and file rows)."""

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
        start = self.start_position = _covered_position(positions)
        if start:
            log.info(
                "Consumer {consumer} is new; it starts after stream seq {position}, "
                "up to which earlier storage consumers applied every event",
                consumer=self.consumer,
                position=start,
                earlier=", ".join(sorted(positions)),
            )
        return start

    def prepare(self, msgs: list[Msg]) -> list[Decoded | None]:
        """Decode and check a batch before its transaction (no database involved), so that
        the next batch can be prepared while the database commits this one.

        One entry per message, in the order given; None for another partition's message.
        """
        return [decode_message(msg) if self._owns(msg.subject) else None for msg in msgs]

    async def handle(
        self, msgs: list[Msg], prepared: list[Decoded | None] | None = None
    ) -> list[Outcome]:
        """Apply a batch in one transaction; one outcome per message, in the order given.

        `prepared` is what `prepare` returned for `msgs`, if it was called ahead.
        """
        started = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(msgs)
        try:
            try:
                result = await self._run(msgs, prepared, careful=False)
            except Exception as exc:
                if not _refused(exc):
                    raise
                log.warning(
                    "A batch of {count} events could not be stored ({error}); "
                    "storing it event by event",
                    count=len(msgs),
                    error=_reason(exc),
                )
                result = await self._run(msgs, prepared, careful=True)
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
                log.warning(
                    "The database failed a batch of {count} events ({error}); it will be retried",
                    count=len(msgs),
                    error=_reason(exc),
                )
            else:
                log.exception(
                    "Projecting a batch of {count} events failed; it will be retried",
                    count=len(msgs),
                )
            self.failed_batches += 1
            return [Retry(f"database error: {_reason(exc)}")] * len(msgs)

        elapsed = time.perf_counter() - started
        self.batches += 1
        self.apply_seconds += elapsed
        self.last_batch_seconds = elapsed
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
            position = await _read_position(conn, self.consumer)
            if position is None:
                position = self.start_position
            result.position = position
            todo = await self._plan(msgs, position, result)
            writer = _Writer(conn)
            await self._reuse(writer, [prepared[index] for index, _, _ in todo])
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
                await _write_position(conn, self.consumer, result.position)
        # Committed: what the batch folded is what the database holds.
        self._remember(writer.generations)
        return result

    async def _reuse(self, writer: _Writer, batch: list[Decoded | None]) -> None:
        """Hand the writer the cached generations this batch touches, those whose row has
        not moved since (another projector, during a change of partitioning, may have
        applied events to them). They leave the cache: a batch that fails takes them with
        it, and only a committed batch puts them back."""
        wanted = {
            decoded.event.generation_id
            for decoded in batch
            if decoded is not None and decoded.event is not None
        }
        cached = {gid: self._cache.pop(gid) for gid in wanted if gid in self._cache}
        if not cached:
            return
        rows = await writer.conn.execute(
            select(generations_table.c.id, generations_table.c.last_stream_seq).where(
                generations_table.c.id.in_(list(cached))
            )
        )
        current = {str(row.id): int(row.last_stream_seq) for row in rows}
        for generation_id, generation in cached.items():
            if current.get(generation_id) == generation.last_stream_seq:
                writer.generations[generation_id] = generation
                self.cache_hits += 1

    def _remember(self, generations: dict[str, _Generation]) -> None:
        for generation_id, generation in generations.items():
            self._cache[generation_id] = generation
            self._cache.move_to_end(generation_id)
        while len(self._cache) > CACHED_GENERATIONS:
            self._cache.popitem(last=False)

    def _owns(self, subject: str) -> bool:
        return (
            self.partitions == 1
            or subjects.event_partition(subject, self.partitions) == self.partition
        )

    async def _apply_guarded(
        self, writer: _Writer, msg: Msg, decoded: Decoded, seq: int
    ) -> Outcome:
        """One message in its own savepoint: if it cannot be stored, it alone is dead-lettered."""
        try:
            async with writer.conn.begin_nested():
                outcome = await writer.apply(decoded, seq)
                await writer.flush()
        except Exception as exc:
            if not _refused(exc):
                raise
            writer.forget()
            outcome = DeadLetter(f"the event could not be stored: {_reason(exc)}")
        if isinstance(outcome, DeadLetter):
            try:
                async with writer.conn.begin_nested():
                    await writer.seen(msg.subject, seq)
                    await writer.flush()
            except Exception as exc:
                if not _refused(exc):
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
        ordered = sorted((_stream_seq(msg), index, msg) for index, msg in enumerate(msgs))
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


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message as decoded and checked ahead of its transaction."""

    event: AnyEvent | None
    problem: str | None = None
    """Why the message is dead-lettered (undecodable, or not projectable), or None."""
    audit: dict[str, Any] | None = None
    """Its audit index row, when it is valid."""


def decode_message(msg: Msg) -> Decoded:
    """A message's event, checked against its subject, with its audit row; pure."""
    try:
        event = decode_event(msg.data)
    except DecodeError as exc:
        return Decoded(None, exc.reason)
    problem = _problem(msg.subject, event)
    if problem is not None:
        return Decoded(event, problem)
    return Decoded(event, None, _audit_row(msg.data, _stream_seq(msg), event))


@dataclass
class _BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    last_seq_of: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    already_applied: int = 0
    other_partitions: int = 0
    position: int = 0


@dataclass
class _Generation:
    """A generation row being updated within a batch."""

    state: GenerationState
    last_stream_seq: int
    files_loaded: bool
    """Whether `state.files` holds the file rows (loaded before the first file event)."""
    dirty: bool = False


class _Writer:
    """Applies events within one transaction; generation rows are written on `flush`."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.generations: dict[str, _Generation] = {}
        self.blobs: set[str] = set()
        self.audit: list[dict[str, Any]] = []
        self.generation_id: str | None = None
        self.already_applied = 0
        # Writes wait for `flush`, which sends each kind as one executemany.
        self.new_blobs: list[dict[str, Any]] = []
        self.file_writes: dict[tuple[str, str], FileState | None] = {}

    def forget(self) -> None:
        """Drop what is cached (after a savepoint rollback the database is the truth)."""
        self.generations.clear()
        self.blobs.clear()
        self.audit.clear()
        self.new_blobs.clear()
        self.file_writes.clear()

    async def apply(self, decoded: Decoded, seq: int) -> Outcome:
        """Apply one decoded message; DeadLetter (having written nothing) if it is invalid."""
        self.generation_id = None
        if decoded.problem is not None or decoded.event is None or decoded.audit is None:
            return DeadLetter(decoded.problem or "the event could not be decoded")
        event = decoded.event

        generation = await self._generation(event.generation_id)
        if generation is not None and seq <= generation.last_stream_seq:
            self.already_applied += 1
            return Ack()
        if generation is None:
            if not isinstance(event, GenerationRequested):
                return DeadLetter(
                    f"generation {event.generation_id} has no generation.requested event "
                    f"before this {event_tag(type(event))} event"
                )
            holder = await self._version_holder(event.project_id, event.version)
            if holder is not None:
                return DeadLetter(
                    f"version {event.version} of project {event.project_id} "
                    f"is already generation {holder}"
                )
            await self._create(event, seq)
        elif generation.state.summary.project_id != event.project_id:
            return DeadLetter(
                f"generation {event.generation_id} belongs to project "
                f"{generation.state.summary.project_id}, not {event.project_id}"
            )
        else:
            await self._fold(generation, event, seq)

        self.audit.append(decoded.audit)
        self.generation_id = event.generation_id
        return Ack()

    async def seen(self, subject: str, seq: int) -> None:
        """Count a dead-lettered message as handled for its generation's `last_stream_seq`."""
        ids = subjects.parse_event_subject(subject)
        if ids is None:
            return
        generation = await self._generation(ids[1])
        if generation is None or generation.state.summary.project_id != ids[0]:
            return
        generation.last_stream_seq = max(generation.last_stream_seq, seq)
        generation.dirty = True

    async def flush(self) -> None:
        """Write the pending blobs and files, the changed generation rows and the audit rows."""
        await self._flush_files()
        now = datetime.now(UTC)
        for generation_id, generation in self.generations.items():
            if not generation.dirty:
                continue
            await self.conn.execute(
                update(generations_table)
                .where(generations_table.c.id == generation_id)
                .values(
                    **row_values(generation.state.summary),
                    last_stream_seq=generation.last_stream_seq,
                    updated_at=now,
                )
            )
            generation.dirty = False
        if self.audit:
            await _insert_many(self.conn, events_table, self.audit)
            self.audit = []

    async def _fold(self, generation: _Generation, event: AnyEvent, seq: int) -> None:
        if isinstance(event, FileWritten | FileDeleted):
            if isinstance(event, FileWritten):
                await self._store_blob(event)
            await self._load_files(generation)
            files = generation.state.files
            before = files.get(event.path)
            apply(generation.state, event, keep_content=False)
            after = files.get(event.path)
            # The fold decides whether the file changed (it ignores events after a
            # terminal one, or already applied); its file row follows.
            if after != before:
                self.file_writes[(event.generation_id, event.path)] = after
        else:
            apply(generation.state, event, keep_content=False)
        generation.last_stream_seq = max(generation.last_stream_seq, seq)
        generation.dirty = True

    async def _create(self, event: GenerationRequested, seq: int) -> None:
        project = (
            await self.conn.execute(
                select(projects_table.c.latest_version).where(
                    projects_table.c.id == event.project_id
                )
            )
        ).first()
        if project is None:
            await self.conn.execute(
                insert(projects_table).values(
                    id=event.project_id,
                    owner=event.owner,
                    name=event.project_name,
                    created_at=event.at,
                    latest_version=event.version,
                )
            )
        elif event.version > project.latest_version:
            await self.conn.execute(
                update(projects_table)
                .where(projects_table.c.id == event.project_id)
                .values(latest_version=event.version)
            )
        state = apply(new_state(event), event, keep_content=False)
        await self.conn.execute(
            insert(generations_table).values(
                **row_values(state.summary), last_stream_seq=seq, updated_at=datetime.now(UTC)
            )
        )
        self.generations[event.generation_id] = _Generation(state, seq, files_loaded=True)

    async def _generation(self, generation_id: str) -> _Generation | None:
        cached = self.generations.get(generation_id)
        if cached is not None:
            return cached
        row = (
            await self.conn.execute(
                select(generations_table).where(generations_table.c.id == generation_id)
            )
        ).first()
        if row is None:
            return None
        state = GenerationState(summary=from_row(row._mapping, GenerationSummary))
        generation = _Generation(state, int(row.last_stream_seq), files_loaded=False)
        self.generations[generation_id] = generation
        return generation

    async def _version_holder(self, project_id: str, version: int) -> str | None:
        return (
            await self.conn.execute(
                select(generations_table.c.id).where(
                    generations_table.c.project_id == project_id,
                    generations_table.c.version == version,
                )
            )
        ).scalar()

    async def _store_blob(self, event: FileWritten) -> None:
        if event.sha256 in self.blobs:
            return
        self.new_blobs.append(
            {"sha256": event.sha256, "size": event.size, "content": event.content.encode()}
        )
        self.blobs.add(event.sha256)

    async def _flush_files(self) -> None:
        """The pending blobs (stored once however many versions share them) and file rows."""
        if self.new_blobs:
            # In one order, so projectors inserting the same blobs at once never deadlock.
            self.new_blobs.sort(key=lambda blob: blob["sha256"])
            await _insert_many(self.conn, blobs_table, self.new_blobs, on_conflict="nothing")
            self.new_blobs = []
        if not self.file_writes:
            return
        deleted = [key for key, state in self.file_writes.items() if state is None]
        written = [
            {
                "generation_id": generation_id,
                "path": path,
                "sha256": state.sha256,
                "size": state.size,
                "phase": state.phase,
                "origin": state.origin,
            }
            for (generation_id, path), state in self.file_writes.items()
            if state is not None
        ]
        self.file_writes = {}
        table = generation_files_table
        for generation_id, path in deleted:
            await self.conn.execute(
                table.delete().where(table.c.generation_id == generation_id, table.c.path == path)
            )
        if written:
            await _insert_many(self.conn, generation_files_table, written, on_conflict="update")

    async def _load_files(self, generation: _Generation) -> None:
        """Put a generation's file rows into its state's file set, once."""
        if generation.files_loaded:
            return
        rows = await self.conn.execute(
            select(generation_files_table).where(
                generation_files_table.c.generation_id == generation.state.generation_id
            )
        )
        generation.state.files = {
            row.path: FileState(
                path=row.path, sha256=row.sha256, size=row.size, phase=row.phase, origin=row.origin
            )
            for row in rows
        }
        generation.files_loaded = True


async def _insert_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, on_conflict: str = ""
) -> None:
    """Insert `rows` (every column of `table` each).

    `on_conflict`: "" (fail), "nothing" (keep the row there) or "update" (replace it). On
    SQLite the rows go as multi-row `INSERT … VALUES (…), (…)` statements of plain values,
    each through the bind processor SQLAlchemy itself uses for its column: SQLAlchemy's
    per-row parameter handling was a quarter of the projector's own time, and an
    executemany hands the GIL back and forth between the driver's thread and the event
    loop once per row. Other databases take the Core statement (one executemany).
    """
    if conn.dialect.name != "sqlite":
        statement: Insert
        if on_conflict == "nothing":
            statement = _insert_ignoring_duplicates(conn, table)
        elif on_conflict == "update":
            statement = _upsert(conn, table)
        else:
            statement = insert(table)
        await conn.execute(statement, rows)
        return
    columns, processors = _sqlite_columns(conn.dialect, table)
    per_statement = max(1, SQLITE_MAX_PARAMETERS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = [
            row[column] if process is None else process(row[column])
            for row in chunk
            for column, process in zip(columns, processors, strict=True)
        ]
        await conn.exec_driver_sql(
            _sqlite_insert_sql(table, columns, on_conflict, len(chunk)), tuple(values)
        )


SQLITE_MAX_PARAMETERS = 999
"""Host parameters per statement: SQLite's limit before 3.32 (32,766 since)."""
_sqlite_column_cache: dict[tuple[Dialect, str], tuple[tuple[str, ...], list[Any]]] = {}


def _sqlite_columns(dialect: Dialect, table: Table) -> tuple[tuple[str, ...], list[Any]]:
    """A table's column names and each one's bind processor (or None), made once."""
    key = (dialect, table.name)
    if key not in _sqlite_column_cache:
        _sqlite_column_cache[key] = (
            tuple(column.name for column in table.columns),
            [column.type.dialect_impl(dialect).bind_processor(dialect) for column in table.columns],
        )
    return _sqlite_column_cache[key]


@lru_cache(maxsize=64)
def _sqlite_insert_sql(table: Table, columns: tuple[str, ...], on_conflict: str, rows: int) -> str:
    row = f"({', '.join('?' for _ in columns)})"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"
    if on_conflict == "nothing":
        sql += " ON CONFLICT DO NOTHING"
    elif on_conflict == "update":
        keys = [column.name for column in table.primary_key.columns]
        sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(
            f"{column} = excluded.{column}" for column in columns if column not in keys
        )
    return sql


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    """`INSERT … ON CONFLICT DO NOTHING` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no duplicate-ignoring insert for {conn.dialect.name}")


def _upsert(conn: AsyncConnection, table: Table) -> Insert:
    """Insert a row, or replace the one with the same primary key."""
    statement = (
        postgresql_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)
    )
    keys = list(table.primary_key.columns)
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c not in keys},
    )


def _problem(subject: str, event: AnyEvent) -> str | None:
    """Why a decoded event cannot be projected, or None."""
    ids = subjects.parse_event_subject(subject)
    if ids != (event.project_id, event.generation_id):
        return (
            f"an event of generation {event.generation_id} in project {event.project_id} "
            f"was published on {subject!r}"
        )
    if isinstance(event, FileWritten | FileDeleted):
        try:
            normalised = safe_path(event.path)
        except PathRejected as exc:
            return str(exc)
        if normalised != event.path:
            return f"path {event.path[:80]!r} is not in its normal form {normalised[:80]!r}"
    if isinstance(event, FileWritten):
        data = event.content.encode()
        if len(data) != event.size:
            return f"{event.path!r} is {len(data)} bytes, not the {event.size} its event says"
        digest = hashlib.sha256(data).hexdigest()
        if digest != event.sha256:
            return f"the content of {event.path!r} has sha256 {digest}, not {event.sha256}"
    return None


def _audit_row(data: bytes, seq: int, event: AnyEvent) -> dict[str, Any]:
    """The audit index row of an event: its JSON object with any file content left out."""
    body, digest = audit_view(data, event)
    if isinstance(event, FileWritten):
        body.pop("content", None)
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


async def _read_position(conn: AsyncConnection, consumer: str) -> int | None:
    value = (
        await conn.execute(
            select(positions_table.c.stream_seq).where(positions_table.c.consumer == consumer)
        )
    ).scalar()
    return None if value is None else int(value)


async def _write_position(conn: AsyncConnection, consumer: str, stream_seq: int) -> None:
    updated = await conn.execute(
        update(positions_table)
        .where(positions_table.c.consumer == consumer)
        .values(stream_seq=stream_seq)
    )
    if updated.rowcount == 0:
        await conn.execute(insert(positions_table).values(consumer=consumer, stream_seq=stream_seq))


_PARTITION_CONSUMER = re.compile(rf"^{STORAGE_CONSUMER}-(\d+)-of-(\d+)$")


def _covered_position(positions: dict[str, int]) -> int:
    """The highest stream sequence up to which some set of storage consumers (the single
    `storage`, or every `storage-<i>-of-<n>` of one n) has applied every event."""
    sets: dict[int, list[int]] = {}
    for name, seq in positions.items():
        if name == STORAGE_CONSUMER:
            sets[1] = [seq]
        elif match := _PARTITION_CONSUMER.match(name):
            partition, partitions = int(match[1]), int(match[2])
            if partition < partitions:
                sets.setdefault(partitions, [0] * partitions)[partition] = seq
    return max((min(seqs) for seqs in sets.values()), default=0)


def _stream_seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


def _refused(exc: BaseException) -> bool:
    """True when the database refused what one event holds (a number out of range, a NUL
    in a text, a constraint): no retry can fix that, so the event alone is dead-lettered.

    Anything else (the database unreachable or locked, a missing table, a bug) fails the
    whole batch, which is retried: the projector waits rather than drop events.
    """
    if isinstance(exc, IntegrityError | DataError | OverflowError):
        return True
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # PostgreSQL's SQLSTATE classes 22 (data exception) and 23 (integrity violation).
        code = str(getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None) or "")
        return code[:2] in ("22", "23")
    return False


def _reason(exc: BaseException) -> str:
    """A short description of a database error (the driver's message, not the SQL)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
