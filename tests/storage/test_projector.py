"""The projector against a real nats-server and a real database (SQLite, and PostgreSQL
where configured): rows, exactly-once redelivery, dead letters, order after failures,
and the pipeline's guarantees (a batch failing while the next is prepared)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from sqlalchemy import event, select, text
from sqlalchemy import insert as core_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import subjects
from contracts.codec import encode
from contracts.events import (
    FileWritten,
    GenerationCompleted,
    InheritedFile,
    LlmCalled,
    PhaseStarted,
    VersionBasedOn,
)
from contracts.streams import DLQ_STREAM, EVENTS_STREAM, STORAGE_CONSUMER, storage_consumer
from services.common.blobs import BlobStore
from services.common.consumer import Ack, DeadLetter, Outcome, PullWorker, Retry
from services.common.eventlog import stream_seq
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.storage.bulk import insert_many, upsert
from services.storage.db import create_engine, migrate
from services.storage.models import Base, events_table
from services.storage.projector import Projector
from services.storage.queries import ReadModel
from services.storage.validation import Decoded
from tests.storage.conftest import (
    publish_generation,
    running_storage,
    sha,
    wait_applied,
    write_file,
)
from tests.support.waiting import eventually

FILES = {
    "app/models.py": "class Product:\n    title: str\n",
    "app/__init__.py": "",
    "README.md": "# Shop\n\nA small shop. ✓\n",
}


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            rows[table.name] = [tuple(row) for row in (await conn.execute(query)).all()]
    return rows


async def count(engine: AsyncEngine, table: str) -> int:
    """Rows in a table."""
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def dead_letters(js: JetStreamContext) -> list[RawStreamMsg]:
    """Every message on the dead-letter stream."""
    state = (await js.stream_info(DLQ_STREAM)).state
    if not state.messages:
        return []
    return [await js.get_msg(DLQ_STREAM, seq) for seq in range(state.first_seq, state.last_seq + 1)]


async def wait_dead_letters(js: JetStreamContext, n: int) -> list[RawStreamMsg]:
    """The dead letters, once there are at least `n`."""

    async def enough() -> bool:
        return len(await dead_letters(js)) >= n

    await eventually(enough, 15, 0.02, what=f"{n} dead letters")
    return await dead_letters(js)


def reason(letter: RawStreamMsg) -> str:
    """The reason a dead letter carries."""
    assert letter.headers is not None
    return str(letter.headers["Kiln-Dlq-Reason"])


async def test_projects_a_generation(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    writer = await publish_generation(js, FILES)
    async with running_storage(storage_settings) as service:
        await wait_applied(read_model, writer.last_stream_seq)
        assert service.projector is not None
        assert service.projector.events_applied == writer.last_seq
        assert service.projector.last_applied_stream_seq == writer.last_stream_seq

    view = await read_model.generation(writer.generation_id)
    assert view is not None
    assert (view.status, view.progress, view.phase) == ("completed", 100, "models")
    assert (view.owner, view.project_name, view.version, view.kind) == (
        "alice",
        "shop",
        1,
        "create",
    )
    assert view.file_count == 3
    assert view.total_bytes == sum(len(c.encode()) for c in FILES.values())
    assert (view.tokens_in, view.tokens_out, view.llm_calls) == (10, 20, 1)
    assert view.phase_durations_ms == {"models": 12}
    assert view.model == "offline-1"
    assert (view.last_seq, view.last_stream_seq) == (writer.last_seq, writer.last_stream_seq)
    assert view.created_at is not None and view.created_at.tzinfo is not None
    assert view.started_at is not None and view.finished_at is not None

    assert await count(engine, "projects") == 1
    assert await count(engine, "blobs") == 3
    assert await count(engine, "generation_files") == 3
    assert await count(engine, "events") == writer.last_seq
    project = await read_model.project(writer.project_id)
    assert project is not None and project.latest_version == 1


async def test_the_audit_index_rederives_every_event_hash(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    writer = await publish_generation(js, FILES)
    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)

    entries = await read_model.events(writer.generation_id)
    contents = await read_model.contents(writer.generation_id)
    assert [e.seq for e in entries] == list(range(1, writer.last_seq + 1))
    previous = ""
    for entry in entries:
        body = dict(entry.body)
        assert body["prev_hash"] == previous
        if entry.type == "file.written":
            assert "content" not in body
            body["content"] = contents[body["path"]].decode()
        canonical = msgspec.json.encode(body, order="sorted")
        assert hashlib.sha256(canonical).hexdigest() == entry.hash
        previous = entry.hash


async def test_a_redelivered_stream_changes_nothing(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    writer = await publish_generation(js, FILES)
    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)
    before = await snapshot(engine)

    # The consumer forgets everything it delivered: the whole stream comes again.
    await js.delete_consumer(EVENTS_STREAM, STORAGE_CONSUMER)
    await js.add_consumer(EVENTS_STREAM, storage_consumer(ack_wait_s=30))
    async with running_storage(storage_settings) as service:
        projector = service.projector
        assert projector is not None

        async def all_skipped() -> bool:
            return projector.events_skipped >= writer.last_seq

        await eventually(all_skipped, 15, 0.02, what="the redelivered events to be skipped")
        assert projector.events_applied == 0
        info = await js.consumer_info(EVENTS_STREAM, STORAGE_CONSUMER)
        assert info.ack_floor.stream_seq == writer.last_stream_seq

    assert await snapshot(engine) == before


async def test_the_same_batch_twice_is_applied_once(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    writer = await publish_generation(js, FILES)
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="twice", stream=EVENTS_STREAM)
    msgs = await sub.fetch(100, timeout=5)
    assert len(msgs) == writer.last_seq
    projector = Projector(engine, consumer="twice", js=js)

    assert await projector.handle(msgs) == [Ack()] * len(msgs)
    before = await snapshot(engine)
    assert await projector.handle(msgs) == [Ack()] * len(msgs)
    assert await snapshot(engine) == before
    assert projector.events_applied == writer.last_seq
    assert projector.events_skipped == writer.last_seq
    assert await read_model.applied_stream_seq("twice") == writer.last_stream_seq


async def test_generations_requested_in_one_batch_are_stored_and_a_taken_version_refused(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # What the batch asks of the database is read for the whole batch at once (and the
    # new rows written at its end): each request must still be judged against the rows
    # before the batch and the requests before it in the batch.
    projector = Projector(engine, consumer="requests", js=js)
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="requests", stream=EVENTS_STREAM)
    b1 = await publish_generation(js, FILES)
    assert await projector.handle(await sub.fetch(100, timeout=5)) == [Ack()] * b1.last_seq

    a1 = await publish_generation(js, FILES)  # a new project, then its version 2
    a2 = await publish_generation(
        js, FILES, project_id=a1.project_id, version=2, parent=a1.generation_id
    )
    b2 = await publish_generation(
        js, FILES, project_id=b1.project_id, version=2, parent=b1.generation_id
    )
    taken_here = await publish_generation(js, FILES, project_id=b1.project_id, version=2)
    taken_before = await publish_generation(js, FILES, project_id=b1.project_id, version=1)
    c1 = await publish_generation(js, FILES)
    msgs = await sub.fetch(200, timeout=5)
    outcomes = await projector.handle(msgs)

    def of(writer: GenerationWriter) -> list[Outcome]:
        return [o for m, o in zip(msgs, outcomes, strict=True) if writer.generation_id in m.subject]

    for writer in (a1, a2, b2, c1):
        assert of(writer) == [Ack()] * writer.last_seq
        view = await read_model.generation(writer.generation_id)
        assert view is not None and view.status == "completed"
    for writer, version, holder in ((taken_here, 2, b2), (taken_before, 1, b1)):
        first, *rest = of(writer)
        assert first == DeadLetter(
            f"version {version} of project {b1.project_id} is already generation "
            f"{holder.generation_id}"
        )
        assert all(isinstance(o, DeadLetter) for o in rest)
        assert await read_model.generation(writer.generation_id) is None
    projects = [await read_model.project(w.project_id) for w in (a1, b1, c1)]
    latest = {p.project_id: p.latest_version for p in projects if p is not None}
    assert latest == {a1.project_id: 2, b1.project_id: 2, c1.project_id: 1}


async def test_a_generation_arriving_one_event_at_a_time_is_folded_from_memory(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    files = {f"app/module_{i}.py": f"x = {i}\n" for i in range(20)}
    writer = await publish_generation(js, files)
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="trickle", stream=EVENTS_STREAM)
    msgs = await sub.fetch(100, timeout=5)
    projector = Projector(engine, consumer="trickle", js=js)

    for msg in msgs:
        assert await projector.handle([msg]) == [Ack()]

    # After the first batch, each one found the generation (and its file rows) in memory.
    assert projector.cache_hits == len(msgs) - 1
    view = await read_model.generation(writer.generation_id)
    assert view is not None
    assert (view.status, view.file_count, view.last_stream_seq) == (
        "completed",
        20,
        writer.last_stream_seq,
    )
    assert await count(engine, "generation_files") == 20
    assert await count(engine, "events") == writer.last_seq


async def test_a_cached_generation_another_projector_moved_is_read_again(
    js: JetStreamContext, engine: AsyncEngine
) -> None:
    # While the partitioning changes, two projectors may apply the same generation: the
    # one holding it in memory must notice that its row moved, not apply events twice.
    writer = await publish_generation(js, FILES)
    first = await (
        await js.pull_subscribe(subjects.ALL_EVENTS, durable="one", stream=EVENTS_STREAM)
    ).fetch(100, timeout=5)
    second = await (
        await js.pull_subscribe(subjects.ALL_EVENTS, durable="two", stream=EVENTS_STREAM)
    ).fetch(100, timeout=5)
    half = len(first) // 2
    one = Projector(engine, consumer="one", js=js)
    two = Projector(engine, consumer="two", js=js)

    assert await one.handle(first[:half]) == [Ack()] * half
    assert await two.handle(second) == [Ack()] * len(second)  # applies the rest
    assert await one.handle(first[half:]) == [Ack()] * (len(first) - half)

    assert one.cache_hits == 0
    assert one.events_applied == half
    assert one.events_skipped == len(first) - half  # already applied by `two`
    assert one.dead_letters == 0
    assert await count(engine, "events") == writer.last_seq


async def test_later_events_wait_for_an_earlier_one_still_to_come(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    writer = await publish_generation(js, FILES)
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="gap", stream=EVENTS_STREAM)
    msgs = await sub.fetch(100, timeout=5)
    projector = Projector(engine, consumer="gap", js=js)

    # As after a failed batch or a message lost in flight: the first three are missing.
    held = await projector.handle(msgs[3:])
    assert all(isinstance(o, Retry) for o in held)
    assert await read_model.applied_stream_seq("gap") == 0
    assert await read_model.generation(writer.generation_id) is None

    assert await projector.handle(msgs[:3]) == [Ack()] * 3
    assert await projector.handle(msgs[3:]) == [Ack()] * (len(msgs) - 3)
    view = await read_model.generation(writer.generation_id)
    assert view is not None and view.status == "completed" and view.file_count == 3


async def test_a_gap_of_deleted_messages_does_not_hold_anything(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    doomed = await js.publish(subjects.generation_events("p", "g"), b"{}")
    await js.delete_msg(EVENTS_STREAM, doomed.seq)
    writer = await publish_generation(js, FILES)
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="deleted", stream=EVENTS_STREAM)
    msgs = await sub.fetch(100, timeout=5)
    projector = Projector(engine, consumer="deleted", js=js)

    assert await projector.handle(msgs) == [Ack()] * len(msgs)
    assert await read_model.applied_stream_seq("deleted") == writer.last_stream_seq


async def test_a_poison_message_is_dead_lettered_and_blocks_nothing(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    poison = b"\x00this is not an event"
    subject = subjects.generation_events(str(uuid.uuid4()), str(uuid.uuid4()))
    stored = await js.publish(subject, poison)
    writer = await publish_generation(js, FILES)

    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)
        [letter] = await wait_dead_letters(js, 1)

    assert letter.subject == subjects.dlq_subject("storage")
    assert letter.data == poison
    assert reason(letter).startswith("not a valid event")
    assert letter.headers is not None
    assert letter.headers["Kiln-Dlq-Subject"] == subject
    assert letter.headers["Kiln-Dlq-Stream-Seq"] == str(stored.seq)
    view = await read_model.generation(writer.generation_id)
    assert view is not None and view.status == "completed"


def _file_event(path: str, content: str, **overrides: Any) -> dict[str, Any]:
    fields = {
        "path": path,
        "content": content,
        "sha256": sha(content),
        "size": len(content.encode()),
        "phase": "models",
    }
    return {**fields, **overrides}


def _named_file_event(path: str, content: str, **overrides: Any) -> dict[str, Any]:
    """A file.written naming its content by sha256 (the content is not in the event)."""
    return {**_file_event(path, content, **overrides), "content": None}


async def _bad_event(js: JetStreamContext, writer: GenerationWriter, kind: str) -> None:
    """Append one event that storage must refuse, in the middle of `writer`'s generation."""
    if kind == "unsafe path":
        await writer.emit(FileWritten, **_file_event("../escape.py", "x = 1\n"))
    elif kind == "hidden file":
        await writer.emit(FileWritten, **_file_event(".env", "SECRET=1\n"))
    elif kind == "sha256 mismatch":
        await writer.emit(FileWritten, **_file_event("bad.py", "x = 1\n", sha256="0" * 64))
    elif kind == "size mismatch":
        await writer.emit(FileWritten, **_file_event("bad.py", "x = 1\n", size=99))
    elif kind == "manifest with an unsafe path":
        inherited = InheritedFile(path="../x.py", sha256=sha("x = 1\n"), size=6)
        await writer.emit(VersionBasedOn, parent_generation_id="p0", files=[inherited])
    elif kind == "manifest naming one path twice":
        inherited = InheritedFile(path="x.py", sha256=sha("x = 1\n"), size=6)
        await writer.emit(VersionBasedOn, parent_generation_id="p0", files=[inherited] * 2)
    elif kind == "manifest naming content nowhere stored":
        inherited = InheritedFile(path="x.py", sha256="0" * 64, size=6)
        await writer.emit(VersionBasedOn, parent_generation_id="p0", files=[inherited])
    elif kind == "file named by content nowhere stored":
        await writer.emit(FileWritten, **_named_file_event("x.py", "x = 1\n"))
    elif kind == "file named by content of another size":
        await BlobStore(js).put("y = 1\n")
        await writer.emit(FileWritten, **_named_file_event("y.py", "y = 1\n", size=99))
    elif kind == "database refusal":
        await writer.emit(LlmCalled, provider="offline", model="m", phase="models", tokens_in=2**63)
    elif kind == "subject mismatch":
        other = GenerationWriter(js, str(uuid.uuid4()), str(uuid.uuid4()), source="test")
        ack = await js.publish(writer.subject, encode(other.build(PhaseStarted, phase="x")))
        writer.last_stream_seq = ack.seq
    elif kind == "no generation.requested":
        orphan = GenerationWriter(js, writer.project_id, str(uuid.uuid4()), source="test")
        await orphan.emit(PhaseStarted, phase="models")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("unsafe path", "contains '..'"),
        ("hidden file", "hidden file"),
        ("sha256 mismatch", "has sha256"),
        ("size mismatch", "not the 99 its event says"),
        ("subject mismatch", "was published on"),
        ("no generation.requested", "has no generation.requested event"),
        ("database refusal", "could not be stored"),
        ("manifest with an unsafe path", "contains '..'"),
        ("manifest naming one path twice", "names one path twice"),
        ("manifest naming content nowhere stored", "the broker holds no file content 0000"),
        ("file named by content nowhere stored", "'x.py' cannot be read: the broker holds no"),
        ("file named by content of another size", "not the 99 its event says"),
    ],
)
async def test_an_invalid_event_is_dead_lettered_and_the_rest_applied(
    js: JetStreamContext,
    storage_settings: Settings,
    read_model: ReadModel,
    kind: str,
    expected: str,
) -> None:
    writer = await publish_generation(js, FILES, complete=False)
    await _bad_event(js, writer, kind)
    await write_file(writer, "after.py", "AFTER = True\n", "models")
    await writer.emit(GenerationCompleted, file_count=4, total_bytes=0, duration_ms=1)

    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)
        [letter] = await wait_dead_letters(js, 1)

    assert expected in reason(letter), reason(letter)
    view = await read_model.generation(writer.generation_id)
    assert view is not None
    assert view.status == "completed"
    assert view.last_stream_seq == writer.last_stream_seq
    assert view.llm_calls == 1
    paths = [f.path for f in await read_model.files(writer.generation_id)]
    assert paths == sorted([*FILES, "after.py"])


async def test_content_shared_by_versions_is_stored_once(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    shared = "def shared():\n    return 42\n" * 20
    v1 = await publish_generation(
        js, {"shared.py": shared, "b.py": "B = 1\n", "gone.py": "GONE = 1\n"}
    )
    v2 = await publish_generation(
        js,
        {"shared.py": shared, "b.py": "B = 2\n", "gone.py": "GONE = 1\n", "new.py": "N = 1\n"},
        project_id=v1.project_id,
        version=2,
        parent=v1.generation_id,
        deleted=("gone.py",),
    )
    async with running_storage(storage_settings):
        await wait_applied(read_model, v2.last_stream_seq)

    assert [f.path for f in await read_model.files(v2.generation_id)] == [
        "b.py",
        "new.py",
        "shared.py",
    ]
    assert await count(engine, "blobs") == 5  # shared, B=1, GONE, B=2, N
    stats = await read_model.storage_stats()
    assert (stats["blobs"], stats["files"]) == (5, 6)
    assert stats["saved_bytes"] == len(shared.encode())
    project = await read_model.project(v1.project_id)
    assert project is not None
    assert project.latest_version == 2
    assert [(v.version, v.parent_generation_id) for v in project.versions] == [
        (1, None),
        (2, v1.generation_id),
    ]


async def test_inherited_files_the_read_model_lacks_are_read_from_the_broker(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # The parent was projected into another database: this one has none of its contents.
    parent = {"keep.py": "KEEP = 1\n" * 30, "README.md": "# Shop ✓\n", "same.py": "S = 1\n"}
    await BlobStore(js).put_many(parent.values())
    writer = await publish_generation(js, {}, version=2, parent=str(uuid.uuid4()), complete=False)
    manifest = [
        InheritedFile(path=path, sha256=sha(content), size=len(content.encode()))
        for path, content in sorted(parent.items())
    ]
    await writer.emit(VersionBasedOn, parent_generation_id="p1", files=manifest)
    await write_file(writer, "keep.py", "KEEP = 2\n", "models")
    await write_file(writer, "other.py", "S = 1\n", "models")  # the same content as same.py
    await writer.emit(GenerationCompleted, file_count=4, total_bytes=0, duration_ms=1)

    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)

    files = {f.path: f for f in await read_model.files(writer.generation_id)}
    assert {p: (f.origin, f.phase) for p, f in files.items()} == {
        "README.md": ("parent", "plan"),
        "keep.py": ("generated", "models"),
        "other.py": ("generated", "models"),
        "same.py": ("parent", "plan"),
    }
    contents = await read_model.contents(writer.generation_id)
    assert contents == {
        "README.md": parent["README.md"].encode(),
        "keep.py": b"KEEP = 2\n",
        "other.py": b"S = 1\n",
        "same.py": b"S = 1\n",
    }
    view = await read_model.generation(writer.generation_id)
    assert view is not None and view.status == "completed"
    assert (view.file_count, view.total_bytes) == (4, sum(len(c) for c in contents.values()))


async def test_files_named_by_content_are_stored_with_their_content_from_the_broker(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # As the orchestrator writes them: each content stored as a blob, then a file.written
    # naming it; a 0.1.0 log's inline content beside them still projects as it did.
    named = {"app/models.py": "class Shop:\n    pass\n" * 40, "twin.py": "T = 1\n"}
    await BlobStore(js).put_many(named.values())
    writer = await publish_generation(js, {}, complete=False)
    for path, content in named.items():
        await writer.emit(FileWritten, **_named_file_event(path, content))
    await writer.emit(FileWritten, **_named_file_event("copy.py", "T = 1\n"))
    await write_file(writer, "inline.py", "I = 1\n", "models")
    await writer.emit(GenerationCompleted, file_count=4, total_bytes=0, duration_ms=1)

    async with running_storage(storage_settings):
        await wait_applied(read_model, writer.last_stream_seq)

    contents = await read_model.contents(writer.generation_id)
    assert contents == {
        **{p: c.encode() for p, c in named.items()},
        "copy.py": b"T = 1\n",
        "inline.py": b"I = 1\n",
    }
    assert await count(engine, "blobs") == 3, "twin.py and copy.py share one blob"
    view = await read_model.generation(writer.generation_id)
    assert view is not None and view.status == "completed"
    assert (view.file_count, view.total_bytes) == (4, sum(len(c) for c in contents.values()))
    events = await read_model.events(writer.generation_id)
    written = [e.body for e in events if e.type == "file.written"]
    assert [b.get("content") for b in written] == [None] * 4, "no content kept twice"
    assert [b["path"] for b in written if "content" not in b] == ["inline.py"], (
        "an inline content is left out of the audit row, a named one says it is named"
    )


async def test_a_database_outage_loses_and_reorders_nothing(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel, engine: AsyncEngine
) -> None:
    first = await publish_generation(js, FILES)
    async with running_storage(storage_settings) as service:
        projector = service.projector
        assert projector is not None
        await wait_applied(read_model, first.last_stream_seq)

        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE events RENAME TO events_away"))
        second = await publish_generation(js, {"two.py": "TWO = 2\n"})

        async def failed() -> bool:
            return projector.failed_batches >= 1

        await eventually(failed, 15, 0.02, what="a batch to fail")
        # Newer events arrive while the failed ones wait for redelivery.
        third = await publish_generation(js, {"three.py": "THREE = 3\n"})
        await eventually(failed, 15, 0.02, what="a batch to fail")
        assert await read_model.applied_stream_seq() == first.last_stream_seq

        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE events_away RENAME TO events"))
        await wait_applied(read_model, third.last_stream_seq, timeout=30)

    for writer in (second, third):
        view = await read_model.generation(writer.generation_id)
        assert view is not None
        assert (view.status, view.file_count, view.last_seq) == ("completed", 1, writer.last_seq)
        assert len(await read_model.events(writer.generation_id)) == writer.last_seq
    assert await dead_letters(js) == []


async def test_restarting_after_a_crash_does_not_wait_for_redelivery(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    first = await publish_generation(js, FILES)
    async with running_storage(storage_settings):
        await wait_applied(read_model, first.last_stream_seq)
    second = await publish_generation(js, {"two.py": "TWO = 2\n"})
    # A projector that fetched these and died before committing: they stay unacked
    # until their 30 s ack wait runs out.
    crashed = await js.pull_subscribe(
        subjects.ALL_EVENTS, durable=STORAGE_CONSUMER, stream=EVENTS_STREAM
    )
    assert len(await crashed.fetch(100, timeout=5)) == second.last_seq
    await crashed.unsubscribe()
    third = await publish_generation(js, {"three.py": "THREE = 3\n"})

    async with running_storage(storage_settings):
        await wait_applied(read_model, third.last_stream_seq, timeout=15)

    for writer in (second, third):
        view = await read_model.generation(writer.generation_id)
        assert view is not None and view.status == "completed" and view.file_count == 1


@pytest.mark.parametrize("on_conflict", ["", "nothing", "update"])
async def test_the_sqlite_bulk_insert_stores_what_sqlalchemy_core_stores(
    tmp_path: Path, on_conflict: str
) -> None:
    # The projector sends SQLite its rows as multi-row statements of plain values (see
    # bulk.insert_many): every stored value must be the one Core would have stored.
    # On the hour: the driver's own datetime adapter would drop the microseconds.
    at = datetime(2026, 12, 2, 3, 0, 0, tzinfo=timezone(timedelta(hours=2)))

    def rows(attempt: int) -> list[dict[str, Any]]:
        # 250 rows of 9 columns: more than one statement's worth of parameters.
        return [
            {
                "stream_seq": i, "generation_id": "g", "project_id": "p", "seq": i,
                "type": "file.written", "at": at + timedelta(seconds=i),
                "progress": i % 3 or None, "hash": f"h{attempt}-{i}",
                "body": {"path": f"a{i}.py", "n": [1, 2.5, None], "attempt": attempt},
            }
            for i in range(1, 251)
        ]  # fmt: skip

    stored = []
    for fast in (False, True):
        url = f"sqlite+aiosqlite:///{tmp_path / f'{fast}.db'}"
        await asyncio.to_thread(migrate, url)
        engine = create_engine(url, writer=True)
        try:
            async with engine.begin() as conn:
                for attempt in range(2 if on_conflict else 1):
                    batch = rows(attempt)
                    if fast:
                        await insert_many(conn, events_table, batch, on_conflict=on_conflict)
                    elif on_conflict == "update":
                        await conn.execute(upsert(conn, events_table), batch)
                    elif on_conflict == "nothing":
                        await conn.execute(
                            core_insert(events_table).prefix_with("OR IGNORE"), batch
                        )
                    else:
                        await conn.execute(core_insert(events_table), batch)
                result = await conn.execute(text("SELECT * FROM events ORDER BY stream_seq"))
                stored.append([tuple(r) for r in result.all()])
        finally:
            await engine.dispose()
    assert stored[0] == stored[1]
    assert len(stored[1]) == 250
    last_hash = stored[1][-1][-1]
    assert last_hash == ("h1-250" if on_conflict == "update" else "h0-250")


async def test_a_batch_whose_commit_fails_after_the_next_was_prepared_holds_the_next(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # The pipeline fetches and decodes batch 2 while batch 1's transaction runs, and settles
    # a batch while the next one is handled. When batch 1's commit fails, nothing of batch 2
    # may be applied or acked before batch 1 is.
    first = await publish_generation(js, FILES)
    second = await publish_generation(js, {"two.py": "TWO = 2\n"})
    projector = Projector(engine, js=js)
    worker = PullWorker(
        js, service="storage", stream=EVENTS_STREAM, config=storage_consumer(ack_wait_s=30)
    )
    second_prepared = asyncio.Event()
    prepared_batches: list[list[int]] = []
    settled: list[tuple[int, str]] = []
    commits: list[str] = []
    acked_uncommitted: list[int] = []

    async def prepare(msgs: list[Msg]) -> list[Decoded | None]:
        decoded = await projector.prepare(msgs)
        prepared_batches.append([stream_seq(msg) for msg in msgs])
        if len(prepared_batches) == 2:
            second_prepared.set()
        return decoded

    async def handle(msgs: list[Msg], prepared: list[Decoded | None]) -> list[Outcome]:
        if len(commits) == 0:
            await asyncio.wait_for(second_prepared.wait(), 10)
        return await projector.handle(msgs, prepared)

    def fail_the_first_commit(_conn: Any) -> None:
        commits.append("failed" if not commits else "ok")
        if commits == ["failed"]:
            raise OperationalError("COMMIT", None, RuntimeError("injected: the disk is full"))

    settle = worker.settle

    async def recording_settle(msg: Msg, outcome: Outcome) -> None:
        seq = stream_seq(msg)
        settled.append((seq, type(outcome).__name__))
        if isinstance(outcome, Ack) and await read_model.applied_stream_seq() < seq:
            acked_uncommitted.append(seq)
        await settle(msg, outcome)

    worker.settle = recording_settle  # type: ignore[method-assign]
    event.listen(engine.sync_engine, "commit", fail_the_first_commit)
    stop = asyncio.Event()
    running = asyncio.create_task(
        worker.run_batches(handle, stop, prepare=prepare, batch=first.last_seq)
    )
    try:
        await wait_applied(read_model, second.last_stream_seq, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        event.remove(engine.sync_engine, "commit", fail_the_first_commit)

    ones = range(1, first.last_stream_seq + 1)
    twos = range(first.last_stream_seq + 1, second.last_stream_seq + 1)
    assert prepared_batches[:2] == [list(ones), list(twos)]
    assert commits[0] == "failed" and projector.failed_batches == 1
    # Batch 1 was retried; batch 2, prepared during its failed commit, was held, not applied.
    assert settled[: len(ones) + len(twos)] == [(seq, "Retry") for seq in [*ones, *twos]]
    # Each acked once, and only once it and every event before it were committed.
    acked = [seq for seq, outcome in settled if outcome == "Ack"]
    assert sorted(acked) == [*ones, *twos]
    assert acked_uncommitted == []
    # Each event applied once, in stream order.
    assert projector.events_applied == second.last_stream_seq
    async with engine.connect() as conn:
        stored = (await conn.execute(select(events_table.c.stream_seq))).scalars().all()
    assert sorted(stored) == [*ones, *twos]
    for writer in (first, second):
        view = await read_model.generation(writer.generation_id)
        assert view is not None and view.status == "completed"
        assert view.last_seq == writer.last_seq


async def test_a_position_another_projector_moved_is_read_again(
    js: JetStreamContext, engine: AsyncEngine
) -> None:
    # A projector keeps its position in memory between batches and moves it with a
    # compare-and-set: if something else moved it meanwhile (here a second projector
    # under the same name, by mistake), the batch is retried from the position read afresh.
    first = await publish_generation(js, FILES)
    await publish_generation(js, {"two.py": "TWO = 2\n"})
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable="twin", stream=EVENTS_STREAM)
    msgs = await sub.fetch(100, timeout=5)
    one, two = msgs[: first.last_seq], msgs[first.last_seq :]
    a = Projector(engine, consumer="twin", js=js)
    b = Projector(engine, consumer="twin", js=js)

    assert await a.handle(one) == [Ack()] * len(one)
    assert await b.handle(one) == [Ack()] * len(one)  # all skipped
    assert await b.handle(two) == [Ack()] * len(two)
    before = await snapshot(engine)

    outcomes = await a.handle(two)
    assert all(isinstance(o, Retry) for o in outcomes) and a.failed_batches == 1
    assert await snapshot(engine) == before
    assert await a.handle(two) == [Ack()] * len(two)  # read again: already applied
    assert await snapshot(engine) == before
    assert (a.events_applied, b.events_applied) == (len(one), len(two))
    assert await count(engine, "events") == len(msgs)


async def _named_generation(js: JetStreamContext, files: dict[str, str], **overrides: Any) -> Any:
    """A generation whose files name their contents (stored as blobs first)."""
    await BlobStore(js).put_many(files.values())
    writer = await publish_generation(js, {}, complete=False)
    for path, content in files.items():
        await writer.emit(FileWritten, **_named_file_event(path, content, **overrides))
    await writer.emit(GenerationCompleted, file_count=len(files), total_bytes=0, duration_ms=1)
    return writer


async def _fetch_all(js: JetStreamContext, durable: str) -> list[Msg]:
    sub = await js.pull_subscribe(subjects.ALL_EVENTS, durable=durable, stream=EVENTS_STREAM)
    return await sub.fetch(1000, timeout=5)


async def test_a_named_content_the_read_model_holds_is_not_read_again(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # Versions share most of their files: once a batch committed a blob, a later event
    # naming it is checked by size and stored without reading the broker's blob again.
    files = {"app/models.py": "class Shop:\n    pass\n" * 40, "twin.py": "T = 1\n"}
    first = await _named_generation(js, files)
    projector = Projector(engine, consumer="held", js=js)
    assert projector.blobs is not None
    read: list[str] = []
    get_each = projector.blobs.get_each

    async def counting(names: Any) -> Any:
        names = set(names)
        read.extend(names)
        return await get_each(names)

    projector.blobs.get_each = counting  # type: ignore[method-assign]
    msgs = await _fetch_all(js, "held")
    assert await projector.handle(msgs) == [Ack()] * len(msgs)
    assert sorted(read) == sorted(sha(c) for c in files.values())

    second = await _named_generation(js, files)
    wrong = await _named_generation(js, {"twin.py": "T = 1\n"}, size=99)
    read.clear()
    msgs = await _fetch_all(js, "held")
    outcomes = await projector.handle(msgs)

    assert read == [] and projector.blobs_reused == 3
    dead = [o for o in outcomes if isinstance(o, DeadLetter)]
    assert [o.reason for o in dead] == ["'twin.py' is 6 bytes, not the 99 its event says"]
    for writer in (first, second):
        assert await read_model.contents(writer.generation_id) == {
            p: c.encode() for p, c in files.items()
        }
    assert await read_model.contents(wrong.generation_id) == {}
    assert await count(engine, "blobs") == 2


async def test_a_held_content_the_database_lacks_is_read_from_the_broker(
    js: JetStreamContext, read_model: ReadModel, engine: AsyncEngine
) -> None:
    # The projector's memory of held blobs is a hint: the batch's transaction checks it,
    # and a blob the database does not hold (it was replaced under a running projector)
    # is read from the broker and stored, as the event's content must be.
    content = "class Shop:\n    pass\n" * 40
    writer = await _named_generation(js, {"app/models.py": content})
    projector = Projector(engine, consumer="stale", js=js)
    projector._hold_blobs({sha(content): len(content.encode())})

    msgs = await _fetch_all(js, "stale")
    assert await projector.handle(msgs) == [Ack()] * len(msgs)

    assert projector.blobs_reused == 1
    assert await read_model.contents(writer.generation_id) == {"app/models.py": content.encode()}
