"""Engines for the read model, and its migrations.

SQLite (the default) runs in WAL mode so the gateway reads while storage writes; its
driver's own transaction handling is replaced by explicit `BEGIN`s so savepoints work.
PostgreSQL gets a pre-pinged pool. The schema comes only from the Alembic migrations.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.storage import sqlite_driver
from services.storage.checkpoint import WAL_SIZE_LIMIT_BYTES, WRITER_AUTOCHECKPOINT_PAGES

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseNotMigrated(RuntimeError):
    """The database's schema is not the one this version of Kiln needs."""


def shown_url(url: str | URL) -> str:
    """The URL without its password, fit for logs and error messages."""
    parsed = make_url(url)
    return URL.create(
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    ).render_as_string(hide_password=False)


def create_engine(url: str, *, writer: bool = False, **options: Any) -> AsyncEngine:
    """An async engine for the read model at `url` (`sqlite+aiosqlite` or `postgresql+asyncpg`).

    `writer`: every transaction will write (the projector's). On SQLite they then take the
    write lock when they begin, so projectors sharing a file queue for it (busy timeout)
    instead of failing when another commits between their first read and first write.
    """
    parsed = make_url(url)
    # The audit rows' JSON is written with msgspec: several times faster than json.dumps.
    options.setdefault("json_serializer", json_text)
    if parsed.get_backend_name() == "sqlite":
        if parsed.get_driver_name() == "aiosqlite":
            options.setdefault("module", sqlite_driver.DBAPI)
        engine = create_async_engine(parsed, **options)
        _configure_sqlite(engine, "BEGIN IMMEDIATE" if writer else "BEGIN", writer=writer)
        return engine
    if parsed.get_backend_name() == "postgresql" and "poolclass" not in options:
        defaults: dict[str, Any] = {
            "pool_size": 10,
            "max_overflow": 10,
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "pool_timeout": 10,
        }
        return create_async_engine(parsed, **{**defaults, **options})
    return create_async_engine(parsed, **options)


def json_text(value: Any) -> str:
    """A JSON column's value as its text (the engines' `json_serializer`)."""
    return msgspec.json.encode(value).decode()


def _configure_sqlite(engine: AsyncEngine, begin: str, *, writer: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver would otherwise open transactions itself, late and without savepoints.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            if writer:
                # Checkpoints are the storage service's WalCheckpointer's job (see there).
                cursor.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
                cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url`, without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def migrate(url: str) -> None:
    """Upgrade the database at `url` to the newest schema (creating a SQLite file if needed).

    Synchronous: call it before the event loop starts or from a thread
    (`await asyncio.to_thread(migrate, url)`), never from a running loop's thread.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str:
    """The newest migration this version of Kiln has."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None, "storage has at least one migration"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The migration the database is at, or None when it has never been migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise DatabaseNotMigrated unless the database is at the newest migration.

    A SQLite file that does not exist is not created by the check.
    """
    if _missing_sqlite_file(engine.url):
        raise DatabaseNotMigrated(
            f"the database at {shown_url(engine.url)} is not migrated: run `kiln migrate`"
        )
    current = await current_revision(engine)
    head = await asyncio.to_thread(head_revision)
    if current == head:
        return
    where = shown_url(engine.url)
    if current is not None and not _known(current):
        raise DatabaseNotMigrated(
            f"the database at {where} is at migration {current}, which this version of Kiln "
            "does not know: it was migrated by a newer Kiln"
        )
    raise DatabaseNotMigrated(f"the database at {where} is not migrated: run `kiln migrate`")


def _missing_sqlite_file(url: URL) -> bool:
    database = url.database
    if url.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return False
    assert database is not None
    return not database.startswith("file:") and not Path(database).expanduser().exists()


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config("")).get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False
