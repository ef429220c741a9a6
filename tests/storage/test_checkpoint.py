"""SQLite WAL checkpoints happen on their own connection, not in the projector's commits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.storage.checkpoint import WRITER_AUTOCHECKPOINT_PAGES, WalCheckpointer, sqlite_file
from services.storage.db import create_engine


async def _pragma(url: str, name: str, *, writer: bool) -> int:
    engine = create_engine(url, writer=writer)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(f"PRAGMA {name}"))).scalar_one())
    finally:
        await engine.dispose()


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}"
    assert await _pragma(url, "wal_autocheckpoint", writer=True) == WRITER_AUTOCHECKPOINT_PAGES
    assert await _pragma(url, "wal_autocheckpoint", writer=False) == 1000  # SQLite's default


async def test_a_checkpoint_copies_the_writers_commits_into_the_database_file(
    tmp_path: Path,
) -> None:
    database = tmp_path / "kiln.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}", writer=True)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x BLOB)"))
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (randomblob(4096))"), [{}] * 500)
        before = database.stat().st_size
        wal_pages = WalCheckpointer(str(database)).checkpoint()
        assert wal_pages > 500
        assert database.stat().st_size > before + 500 * 4096
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 500
    finally:
        await engine.dispose()


async def test_the_checkpointer_runs_every_interval_until_stopped(tmp_path: Path) -> None:
    database = tmp_path / "kiln.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}", writer=True)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    await engine.dispose()
    checkpointer = WalCheckpointer(str(database), interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(checkpointer.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert checkpointer.checkpoints >= 3


def test_only_a_sqlite_file_has_a_wal_to_checkpoint() -> None:
    assert sqlite_file(make_url("sqlite+aiosqlite:////data/kiln.db")) == "/data/kiln.db"
    assert sqlite_file(make_url("sqlite+aiosqlite:///:memory:")) is None
    assert sqlite_file(make_url("postgresql+asyncpg://kiln@db/kiln")) is None
