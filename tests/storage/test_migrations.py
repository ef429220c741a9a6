"""The Alembic migrations on an empty database, `check_migrated`, and the models matching
the schema the migrations create."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage.db import (
    DatabaseNotMigrated,
    alembic_config,
    check_migrated,
    create_engine,
    current_revision,
    head_revision,
    migrate,
)
from services.storage.models import Base

TABLES = {"projects", "generations", "blobs", "generation_files", "events", "projection_positions"}


@pytest.fixture
async def empty_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's empty database."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def tables(engine: AsyncEngine) -> set[str]:
    """The tables the database has."""
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_upgrade_an_empty_database_to_head(
    database_url: str, empty_engine: AsyncEngine
) -> None:
    assert await tables(empty_engine) == set()
    assert await current_revision(empty_engine) is None

    await asyncio.to_thread(migrate, database_url)
    assert await tables(empty_engine) == TABLES | {"alembic_version"}
    assert await current_revision(empty_engine) == head_revision()

    await asyncio.to_thread(migrate, database_url)  # a second run changes nothing
    assert await current_revision(empty_engine) == head_revision()

    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "base")
    assert await tables(empty_engine) == {"alembic_version"}


async def test_check_migrated_tells_to_run_kiln_migrate(
    database_url: str, empty_engine: AsyncEngine
) -> None:
    with pytest.raises(DatabaseNotMigrated) as raised:
        await check_migrated(empty_engine)
    message = str(raised.value)
    assert message.endswith("is not migrated: run `kiln migrate`")
    assert str(make_url(database_url).database) in message

    await asyncio.to_thread(migrate, database_url)
    await check_migrated(empty_engine)


async def test_check_migrated_never_shows_the_password(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("only a server URL carries a password")
    # The test server trusts local connections, so any password gets in.
    engine = create_engine(url.set(password="s3cret-pw").render_as_string(hide_password=False))
    try:
        with pytest.raises(DatabaseNotMigrated) as raised:
            await check_migrated(engine)
    finally:
        await engine.dispose()
    assert "s3cret-pw" not in str(raised.value)
    assert "***" not in str(raised.value)


async def test_a_database_from_a_newer_kiln_is_refused(
    database_url: str, empty_engine: AsyncEngine
) -> None:
    await asyncio.to_thread(migrate, database_url)
    async with empty_engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    with pytest.raises(DatabaseNotMigrated, match="migrated by a newer Kiln"):
        await check_migrated(empty_engine)


async def test_the_models_match_the_migrated_schema(
    database_url: str, empty_engine: AsyncEngine
) -> None:
    await asyncio.to_thread(migrate, database_url)

    def differences(sync: Connection) -> list[object]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with empty_engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_sqlite_connections_are_tuned(database_url: str, empty_engine: AsyncEngine) -> None:
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("SQLite pragmas")
    async with empty_engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,
        "busy_timeout": 10_000,
    }
