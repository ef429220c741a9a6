"""Alembic environment: runs the migrations over an async engine (SQLite or PostgreSQL).

The configuration is built in code (`services.storage.db.alembic_config`); the database
URL arrives in `config.attributes["url"]`, so a password never passes through configparser.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool

from services.storage.db import create_engine
from services.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass it in config.attributes['url']")
    return str(url)


def run_migrations_offline() -> None:
    """Emit the migrations as SQL for the URL's dialect, without connecting."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect with the same engine setup the services use, and migrate."""
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
