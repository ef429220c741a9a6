"""Fixtures of the storage suite: a real nats-server per module, a fresh database per test.

Every database test runs twice: on a SQLite file, and on its own PostgreSQL database
when `KILN_TEST_POSTGRES_URL` is set (the variant is skipped, saying so, when it is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.events import (
    FileDeleted,
    FileWritten,
    GenerationCompleted,
    GenerationRequested,
    GenerationStarted,
    LlmCalled,
    PhaseCompleted,
    PhaseStarted,
)
from contracts.phases import PHASES
from contracts.streams import DLQ_STREAM, EVENTS_STREAM
from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.storage.db import create_engine, migrate
from services.storage.queries import ReadModel
from services.storage.service import StorageService
from tests.conftest import make_settings
from tests.support.databases import POSTGRES_ENV, postgres_database
from tests.support.waiting import eventually

__all__ = ["POSTGRES_ENV", "postgres_database"]


@pytest.fixture(scope="module")
def nats_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One nats-server for the whole module (each test empties its streams)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def js(nats_module: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on fresh, empty Kiln streams."""
    nc = await nats.connect(nats_module.url)
    js = nc.jetstream()
    for stream in (EVENTS_STREAM, DLQ_STREAM):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
    await ensure_streams(js)
    try:
        yield js
    finally:
        await nc.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the PostgreSQL variant needs a server")
    async with postgres_database(base) as url:
        yield url


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """The database, migrated to the newest schema."""
    await asyncio.to_thread(migrate, database_url)
    return database_url


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated database, disposed after the test."""
    engine = create_engine(migrated_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def read_model(engine: AsyncEngine) -> ReadModel:
    """The read-only query module on the test's database."""
    return ReadModel(engine)


@pytest.fixture
def storage_settings(tmp_path: Path, nats_module: EmbeddedNats, migrated_url: str) -> Settings:
    """Settings pointing at the module's nats-server and the test's database."""
    return make_settings(tmp_path, nats_module.url, KILN_DATABASE_URL=migrated_url)


@contextlib.asynccontextmanager
async def running_storage(settings: Settings) -> AsyncIterator[StorageService]:
    """A StorageService running in this event loop until the block ends."""
    service = StorageService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()
    assert service.ready.is_set(), "storage did not start"
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_applied(read_model: ReadModel, stream_seq: int, timeout: float = 15) -> None:
    """Wait until storage has applied the stream up to `stream_seq`."""

    async def applied() -> bool:
        return await read_model.applied_stream_seq() >= stream_seq

    await eventually(applied, timeout, 0.02, what=f"stream seq {stream_seq} to be applied")


def sha(content: str) -> str:
    """sha256 of a file content as file.written carries it."""
    return hashlib.sha256(content.encode()).hexdigest()


async def write_file(writer: GenerationWriter, path: str, content: str, phase: str) -> None:
    """Append a file.written event."""
    await writer.emit(
        FileWritten,
        path=path,
        content=content,
        sha256=sha(content),
        size=len(content.encode()),
        phase=phase,
    )


async def publish_generation(
    js: JetStreamContext,
    files: dict[str, str],
    *,
    project_id: str | None = None,
    version: int = 1,
    parent: str | None = None,
    deleted: tuple[str, ...] = (),
    owner: str = "alice",
    project_name: str = "shop",
    complete: bool = True,
) -> GenerationWriter:
    """Publish a small generation's events as the orchestrator would; returns its writer."""
    writer = GenerationWriter(js, project_id or str(uuid.uuid4()), str(uuid.uuid4()), source="test")
    await writer.emit(
        GenerationRequested,
        owner=owner,
        project_name=project_name,
        version=version,
        kind="iterate" if parent else "create",
        prompt="add reviews" if parent else "a small shop",
        parent_generation_id=parent,
        model="offline-1",
    )
    await writer.emit(GenerationStarted, plan=list(PHASES[:2]), worker="test:1", provider="offline")
    await writer.emit(PhaseStarted, phase="models", progress=5)
    for path, content in files.items():
        await write_file(writer, path, content, "models")
    for path in deleted:
        await writer.emit(FileDeleted, path=path, reason="replaced", phase="models")
    await writer.emit(
        LlmCalled,
        provider="offline",
        model="offline-1",
        phase="models",
        tokens_in=10,
        tokens_out=20,
    )
    await writer.emit(
        PhaseCompleted,
        phase="models",
        files=list(files),
        deleted=list(deleted),
        duration_ms=12,
        progress=50,
    )
    if complete:
        total = sum(len(c.encode()) for c in files.values())
        await writer.emit(
            GenerationCompleted, file_count=len(files), total_bytes=total, duration_ms=40
        )
    return writer
