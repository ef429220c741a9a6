"""Several storage projectors sharing one database, each applying its partition's projects:
together they build exactly the read model one projector builds, and the partitioning can
change without losing or repeating an event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import subjects
from contracts.streams import EVENTS_STREAM, storage_consumer_name
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings, SettingsError, load_settings
from services.storage.db import create_engine, migrate
from services.storage.models import Base
from services.storage.queries import ReadModel
from services.storage.service import StorageService
from tests.conftest import make_settings
from tests.storage.conftest import (
    POSTGRES_ENV,
    postgres_database,
    publish_generation,
    running_storage,
)
from tests.storage.test_projector import dead_letters
from tests.support.waiting import eventually

# Columns that say when a row was written, not what it holds.
WRITE_TIMES = {"updated_at"}
SHARED = "# Shared by every project: stored once, whichever projector stores it first.\n"


async def read_model_rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the read model, in key order, without positions and write times."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name in ("projection_positions", "alembic_version"):
                continue
            columns = [c for c in table.columns if c.name not in WRITE_TIMES]
            query = select(*columns).order_by(*table.primary_key.columns)
            rows[table.name] = [tuple(row) for row in (await conn.execute(query)).all()]
    return rows


@contextlib.asynccontextmanager
async def another_database(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A second migrated database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path / 'single.db'}"
        await asyncio.to_thread(migrate, url)
        yield url
        return
    async with postgres_database(os.environ[POSTGRES_ENV]) as url:
        await asyncio.to_thread(migrate, url)
        yield url


def partition_settings(settings: Settings, partition: int, partitions: int) -> Settings:
    """The same settings for projector `partition` of `partitions`."""
    return load_settings(
        {
            "NATS_URL": settings.nats_url or "",
            "KILN_DATABASE_URL": settings.effective_database_url,
            "KILN_DATA_DIR": settings.data_dir,
            "KILN_STORAGE_PARTITIONS": str(partitions),
            "KILN_STORAGE_PARTITION": str(partition),
        }
    )


@contextlib.asynccontextmanager
async def running_partitions(
    settings: Settings, partitions: int
) -> AsyncIterator[list[StorageService]]:
    """`partitions` projectors on the same database, running until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        services = [
            await stack.enter_async_context(
                running_storage(partition_settings(settings, i, partitions))
            )
            for i in range(partitions)
        ]
        yield services


async def wait_positions(engine: AsyncEngine, consumers: list[str], stream_seq: int) -> None:
    """Wait until every named consumer has handled the stream up to `stream_seq`."""
    read_model = ReadModel(engine)

    async def handled() -> bool:
        for consumer in consumers:
            if await read_model.applied_stream_seq(consumer) < stream_seq:
                return False
        return True

    await eventually(
        handled, 30, 0.02, what=f"{', '.join(consumers)} to reach stream seq {stream_seq}"
    )


def project_id_for(n: int) -> str:
    """A project id in partition n % 2 of 2 and n % 3 of 3: every partition gets projects."""
    while True:
        project_id = str(uuid.uuid4())
        if subjects.partition_of(project_id, 2) == n % 2 and (
            subjects.partition_of(project_id, 3) == n % 3
        ):
            return project_id


async def publish_projects(js: JetStreamContext, projects: int) -> list[GenerationWriter]:
    """Per project: v1, then v2 iterating on it (changing one file, deleting another)."""
    writers = []
    for n in range(projects):
        files = {
            "README.md": SHARED,
            f"app/project_{n}.py": f"NAME = 'project {n}'\n",
            "app/old.py": f"OLD = {n}\n",
        }
        v1 = await publish_generation(js, files, project_id=project_id_for(n), project_name=f"p{n}")
        v2 = await publish_generation(
            js,
            {**files, f"app/project_{n}.py": f"NAME = 'project {n}, v2'\n"},
            project_id=v1.project_id,
            project_name=f"p{n}",
            version=2,
            parent=v1.generation_id,
            deleted=("app/old.py",),
            complete=n % 3 != 0,  # some versions still running
        )
        writers += [v1, v2]
    return writers


def test_a_project_always_falls_in_the_same_partition() -> None:
    project = "4a3cbe2e-0c0f-4d8e-9f57-3f0c1b2d9a10"
    assert subjects.partition_of(project, 1) == 0
    assert subjects.partition_of(project, 4) == subjects.partition_of(project, 4)
    generation = str(uuid.uuid4())
    subject = subjects.generation_events(project, generation)
    assert subjects.event_partition(subject, 4) == subjects.partition_of(project, 4)
    assert subjects.event_partition("not.an.events.subject.at.all", 4) == 0


def test_projects_spread_over_the_partitions() -> None:
    counts = [0, 0, 0, 0]
    for _ in range(4000):
        counts[subjects.partition_of(str(uuid.uuid4()), 4)] += 1
    assert all(800 < count < 1200 for count in counts), counts


def test_each_partition_has_its_own_consumer() -> None:
    assert storage_consumer_name() == "storage"
    assert storage_consumer_name(0, 1) == "storage"
    assert storage_consumer_name(1, 3) == "storage-1-of-3"


@pytest.mark.parametrize(
    ("partition", "partitions", "message"),
    [
        ("2", "2", "KILN_STORAGE_PARTITION must be between 0 and 1"),
        ("-1", "2", "KILN_STORAGE_PARTITION must be between 0 and 1"),
        ("0", "0", "KILN_STORAGE_PARTITIONS must be between 1 and 64"),
        ("0", "65", "KILN_STORAGE_PARTITIONS must be between 1 and 64"),
    ],
)
def test_a_partition_out_of_range_is_refused(partition: str, partitions: str, message: str) -> None:
    settings = load_settings(
        {"KILN_STORAGE_PARTITION": partition, "KILN_STORAGE_PARTITIONS": partitions}
    )
    with pytest.raises(SettingsError, match=message):
        settings.storage_partitioning()


async def test_partitioned_projectors_build_the_read_model_one_projector_builds(
    js: JetStreamContext,
    storage_settings: Settings,
    engine: AsyncEngine,
    migrated_url: str,
    tmp_path: Path,
) -> None:
    before = await publish_projects(js, 6)
    async with running_partitions(storage_settings, 3) as services:
        # Events arriving while the partitions run, interleaved across projects.
        live = await publish_projects(js, 6)
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        consumers = [storage_consumer_name(i, 3) for i in range(3)]
        await wait_positions(engine, consumers, last)
        projectors = [service.projector for service in services]
        assert all(p is not None for p in projectors)
        applied = [p.events_applied for p in projectors if p is not None]
        others = [p.events_of_other_partitions for p in projectors if p is not None]

    events = sum(w.last_seq for w in before + live)
    # Every event applied exactly once, by one projector; each projector saw all of them.
    assert sum(applied) == events
    assert all(a + o == events for a, o in zip(applied, others, strict=True))
    assert all(applied), f"a partition applied nothing: {applied}"
    assert await dead_letters(js) == []

    async with another_database(migrated_url, tmp_path) as single_url:
        single = make_settings(
            tmp_path, storage_settings.nats_url or "", KILN_DATABASE_URL=single_url
        )
        single_engine = create_engine(single_url)
        try:
            async with running_storage(single):
                await wait_positions(single_engine, ["storage"], last)
            assert await read_model_rows(engine) == await read_model_rows(single_engine)
        finally:
            await single_engine.dispose()

    read_model = ReadModel(engine)
    for writer in before + live:
        view = await read_model.generation(writer.generation_id)
        assert view is not None and view.last_stream_seq == writer.last_stream_seq


async def test_the_partitioning_can_change_without_losing_or_repeating_an_event(
    js: JetStreamContext,
    storage_settings: Settings,
    engine: AsyncEngine,
    migrated_url: str,
    tmp_path: Path,
) -> None:
    # One projector applies the first projects, then stops; two partitions take over.
    first = await publish_projects(js, 3)
    async with running_storage(storage_settings) as service:
        first_last = first[-1].last_stream_seq
        await wait_positions(engine, ["storage"], first_last)
        assert service.projector is not None
    later = await publish_projects(js, 3)

    async with running_partitions(storage_settings, 2) as services:
        for n, partition in enumerate(services):
            assert partition.projector is not None
            # A new partition starts where the projector before it stopped.
            info = await js.consumer_info(EVENTS_STREAM, storage_consumer_name(n, 2))
            assert info.config.opt_start_seq == first_last + 1
        last = later[-1].last_stream_seq
        await wait_positions(engine, [storage_consumer_name(i, 2) for i in range(2)], last)
        applied = sum(p.projector.events_applied for p in services if p.projector is not None)

    assert applied == sum(w.last_seq for w in later)
    assert await dead_letters(js) == []
    async with another_database(migrated_url, tmp_path) as single_url:
        single = make_settings(
            tmp_path, storage_settings.nats_url or "", KILN_DATABASE_URL=single_url
        )
        single_engine = create_engine(single_url)
        try:
            async with running_storage(single):
                await wait_positions(single_engine, ["storage"], last)
            assert await read_model_rows(engine) == await read_model_rows(single_engine)
        finally:
            await single_engine.dispose()


async def test_a_new_partitioning_replays_what_others_applied_without_applying_it_twice(
    js: JetStreamContext, storage_settings: Settings, engine: AsyncEngine
) -> None:
    # Partition 0 of 2 ran ahead, partition 1 of 2 never ran: a new single projector starts
    # at the lowest position (0) and skips what partition 0 applied, event by event.
    writers = await publish_projects(js, 4)
    last = writers[-1].last_stream_seq
    async with running_storage(partition_settings(storage_settings, 0, 2)):
        await wait_positions(engine, [storage_consumer_name(0, 2)], last)
    partial = await read_model_rows(engine)
    assert partial["generations"], "partition 0 applied some projects"

    async with running_storage(storage_settings) as service:
        await wait_positions(engine, ["storage"], last)
        assert service.projector is not None
        events = sum(w.last_seq for w in writers)
        applied = service.projector.events_applied
        assert 0 < applied < events
        assert applied + len(partial["events"]) == events
    assert await dead_letters(js) == []
    assert len((await read_model_rows(engine))["events"]) == events


def test_a_new_consumer_starts_where_every_event_is_applied() -> None:
    from services.storage.positions import covered_position

    assert covered_position({}) == 0
    assert covered_position({"storage": 90}) == 90
    # A partition that never ran has applied nothing.
    assert covered_position({"storage-0-of-2": 90}) == 0
    assert covered_position({"storage-0-of-2": 90, "storage-1-of-2": 70}) == 70
    # The set that covers the most wins; a set that stopped long ago does not hold it back.
    assert covered_position({"storage": 40, "storage-0-of-2": 90, "storage-1-of-2": 70}) == 70
    assert covered_position({"storage": 95, "storage-0-of-2": 90, "storage-1-of-2": 70}) == 95
    assert covered_position({"storage-7-of-2": 90, "somebody-else": 99}) == 0
