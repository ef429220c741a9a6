"""Every ReadModel method against data the real projector stored, read through a
connection the database itself keeps read-only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.codec import event_hash
from contracts.events import GenerationFailed
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.storage.db import create_engine
from services.storage.queries import FileEntry, ReadModel
from tests.storage.conftest import publish_generation, running_storage, sha, wait_applied

V1_FILES = {"app/models.py": "class Product:\n    pass\n", "README.md": "# Shop\n"}
V2_FILES = {"app/models.py": "class Product:\n    title: str\n", "README.md": "# Shop\n"}


@dataclass
class Projected:
    """What the fixture published, all of it projected."""

    v1: GenerationWriter
    v2: GenerationWriter
    other: GenerationWriter
    failed: GenerationWriter
    bobs: GenerationWriter


@pytest.fixture
async def projected(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> Projected:
    """Two versions of alice's shop, a second alice project that failed, one of bob's."""
    v1 = await publish_generation(js, V1_FILES)
    v2 = await publish_generation(
        js, V2_FILES, project_id=v1.project_id, version=2, parent=v1.generation_id
    )
    other = await publish_generation(js, {"main.py": "print()\n"}, project_name="blog")
    failed = await publish_generation(
        js, {"x.py": "X = 1\n"}, project_id=other.project_id, version=2, complete=False
    )
    await failed.emit(
        GenerationFailed,
        phase="models",
        message="the provider answered 500",
        retryable=True,
        error_kind="provider",
    )
    bobs = await publish_generation(js, {"bob.py": "B = 1\n"}, owner="bob")
    async with running_storage(storage_settings):
        await wait_applied(read_model, bobs.last_stream_seq)
    return Projected(v1, v2, other, failed, bobs)


@pytest.fixture
async def reader(engine: AsyncEngine) -> AsyncIterator[ReadModel]:
    """A ReadModel whose connections cannot write: the database refuses it."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        readonly = create_engine(
            str(make_url(f"sqlite+aiosqlite:///file:{url.database}?mode=ro&uri=true"))
        )
    else:
        readonly = create_engine(
            url.render_as_string(hide_password=False),
            connect_args={"server_settings": {"default_transaction_read_only": "on"}},
        )
    try:
        yield ReadModel(readonly)
    finally:
        await readonly.dispose()


async def test_the_reader_really_cannot_write(reader: ReadModel) -> None:
    with pytest.raises(DBAPIError):
        async with reader.engine.begin() as conn:
            await conn.execute(text("DELETE FROM projects"))


async def test_generation(projected: Projected, reader: ReadModel) -> None:
    view = await reader.generation(projected.v2.generation_id)
    assert view is not None
    assert view.generation_id == projected.v2.generation_id
    assert view.project_id == projected.v1.project_id
    assert (view.project_name, view.owner, view.version, view.kind) == (
        "shop",
        "alice",
        2,
        "iterate",
    )
    assert view.parent_generation_id == projected.v1.generation_id
    assert (view.status, view.progress, view.error) == ("completed", 100, None)
    assert (view.provider, view.model, view.prompt) == ("offline", "offline-1", "add reviews")
    assert view.locked_paths == []
    assert view.file_count == 2
    assert view.total_bytes == sum(len(c.encode()) for c in V2_FILES.values())
    assert view.last_stream_seq == projected.v2.last_stream_seq
    assert view.started_at is not None and view.finished_at is not None
    assert view.created_at is not None and view.created_at <= view.finished_at

    failed = await reader.generation(projected.failed.generation_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.error_phase, failed.error_kind) == (
        "failed",
        "the provider answered 500",
        "models",
        "provider",
    )
    assert failed.retryable is True
    assert failed.file_count == 1

    assert await reader.generation("no-such-generation") is None


async def test_files(projected: Projected, reader: ReadModel) -> None:
    entries = await reader.files(projected.v2.generation_id)
    assert entries == [
        FileEntry(
            path=path,
            size=len(content.encode()),
            sha256=sha(content),
            phase="models",
            origin="generated",
        )
        for path, content in sorted(V2_FILES.items())
    ]
    assert await reader.files("no-such-generation") == []


async def test_file(projected: Projected, reader: ReadModel) -> None:
    found = await reader.file(projected.v1.generation_id, "app/models.py")
    assert found is not None
    entry, content = found
    assert content == V1_FILES["app/models.py"].encode()
    assert entry.sha256 == sha(V1_FILES["app/models.py"])
    assert await reader.file(projected.v1.generation_id, "missing.py") is None
    assert await reader.file("no-such-generation", "app/models.py") is None


async def test_contents(projected: Projected, reader: ReadModel) -> None:
    assert await reader.contents(projected.v1.generation_id) == {
        path: content.encode() for path, content in V1_FILES.items()
    }
    assert await reader.contents(projected.v2.generation_id) == {
        path: content.encode() for path, content in V2_FILES.items()
    }
    assert await reader.contents("no-such-generation") == {}


async def test_events(projected: Projected, reader: ReadModel, js: JetStreamContext) -> None:
    entries = await reader.events(projected.v1.generation_id)
    stored = await read_generation(js, projected.v1.generation_id)
    assert [e.stream_seq for e in entries] == [s.stream_seq for s in stored]
    assert [e.seq for e in entries] == list(range(1, len(stored) + 1))
    assert [e.hash for e in entries] == [event_hash(s.data) for s in stored]
    assert entries[0].type == "generation.requested"
    assert entries[-1].type == "generation.completed" and entries[-1].progress is None
    written = [e for e in entries if e.type == "file.written"]
    assert {e.body["path"] for e in written} == set(V1_FILES)
    assert all("content" not in e.body for e in written)
    assert entries[0].body["owner"] == "alice"
    assert entries[0].at.tzinfo is not None
    assert await reader.events("no-such-generation") == []


async def test_projects(projected: Projected, reader: ReadModel) -> None:
    projects = await reader.projects("alice")
    assert [p.name for p in projects] == ["blog", "shop"]  # newest first
    blog, shop = projects
    assert shop.project_id == shop.id == projected.v1.project_id
    assert (shop.owner, shop.latest_version) == ("alice", 2)
    assert [(v.generation_id, v.version, v.parent_generation_id) for v in shop.versions] == [
        (projected.v1.generation_id, 1, None),
        (projected.v2.generation_id, 2, projected.v1.generation_id),
    ]
    assert [(v.version, v.status, v.file_count) for v in blog.versions] == [
        (1, "completed", 1),
        (2, "failed", 1),
    ]
    v2 = shop.versions[1]
    assert (v2.kind, v2.prompt, v2.provider, v2.progress) == (
        "iterate",
        "add reviews",
        "offline",
        100,
    )
    assert v2.total_bytes == sum(len(c.encode()) for c in V2_FILES.values())
    assert v2.created_at is not None and v2.finished_at is not None

    assert [p.name for p in await reader.projects("bob")] == ["shop"]
    assert await reader.projects("carol") == []


async def test_project(projected: Projected, reader: ReadModel) -> None:
    project = await reader.project(projected.other.project_id)
    assert project is not None
    assert (project.name, project.owner, project.latest_version) == ("blog", "alice", 2)
    assert [v.generation_id for v in project.versions] == [
        projected.other.generation_id,
        projected.failed.generation_id,
    ]
    assert await reader.project("no-such-project") is None


async def test_storage_stats(projected: Projected, reader: ReadModel) -> None:
    stats = await reader.storage_stats()
    # README.md is the same in both versions of the shop: one blob, two file rows.
    assert stats["files"] == 2 + 2 + 1 + 1 + 1
    assert stats["blobs"] == stats["files"] - 1
    assert stats["saved_bytes"] == len(b"# Shop\n")
    assert stats["file_bytes"] - stats["blob_bytes"] == stats["saved_bytes"]


async def test_ping_and_applied_stream_seq(projected: Projected, reader: ReadModel) -> None:
    await reader.ping()
    assert await reader.applied_stream_seq() == projected.bobs.last_stream_seq
    assert await reader.applied_stream_seq("another-consumer") == 0
