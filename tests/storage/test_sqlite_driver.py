"""The read model's SQLite driver: SQLAlchemy's aiosqlite adaptation, each statement one call
on the driver's thread, with the same results and errors as SQLAlchemy's own cursor."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_cursor
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.storage import sqlite_driver
from services.storage.db import create_engine


async def _session(engine: AsyncEngine) -> list[Any]:
    """What a series of statements returned and raised, as plain values."""
    seen: list[Any] = []
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)"))
        inserted = await conn.execute(text("INSERT INTO t (b) VALUES ('x'), ('y')"))
        seen += [inserted.rowcount, inserted.lastrowid]
        many = await conn.execute(text("INSERT INTO t (b) VALUES (:b)"), [{"b": "z"}, {"b": "w"}])
        seen.append(many.rowcount)
        updated = await conn.execute(text("UPDATE t SET b = b || '!' WHERE a > 2"))
        seen.append(updated.rowcount)
        seen.append((await conn.execute(text("SELECT a, b FROM t ORDER BY a"))).all())
        seen.append((await conn.execute(text("SELECT b FROM t WHERE a = 99"))).first())
        seen.append((await conn.execute(text("SELECT count(*) FROM t"))).scalar())
        rows = await conn.execute(text("SELECT a FROM t ORDER BY a"))
        seen += [rows.fetchone(), rows.fetchmany(2), rows.fetchall(), list(rows.keys())]
        seen.append((await conn.exec_driver_sql("SELECT ? + ?", (2, 3))).scalar())
    async with engine.connect() as conn:
        for statement in ("INSERT INTO t (a, b) VALUES (1, 'again')", "SELECT nothing FROM t"):
            with pytest.raises((IntegrityError, OperationalError)) as caught:
                await conn.execute(text(statement))
            seen.append((type(caught.value).__name__, str(caught.value.orig)))
        await conn.rollback()
        seen.append((await conn.execute(text("SELECT count(*) FROM t"))).scalar())
    return seen


async def test_statements_give_what_sqlalchemys_own_cursor_gives(tmp_path: Path) -> None:
    mine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mine.sqlite'}")
    own = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'own.sqlite'}")
    try:
        assert isinstance(mine.sync_engine.dialect.dbapi, sqlite_driver.OneTripDBAPI)
        assert await _session(mine) == await _session(own)
    finally:
        await mine.dispose()
        await own.dispose()


async def test_a_statement_is_one_call_on_the_drivers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    calls: collections.Counter[str] = collections.Counter()
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls[getattr(fn, "__name__", "?")] += 1
        return await execute(self, fn, *args, **kwargs)

    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))  # the connection is opened and set up
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            rows = await conn.execute(text("SELECT 1 UNION SELECT 2"))
            assert rows.all() == [(1,), (2,)]
            await conn.execute(text("CREATE TABLE t (a INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (:a)"), [{"a": 1}, {"a": 2}])
        assert calls == {"_run": 3, "rollback": 1}  # the pool's reset on return
    finally:
        await engine.dispose()


def test_the_internals_it_builds_on_are_there() -> None:
    # `OneTripCursor` replaces the adapted cursor's statement methods and the state its
    # other methods read; an upgrade of SQLAlchemy or aiosqlite that moves them fails here.
    assert AsyncAdapt_aiosqlite_connection._cursor_cls.__name__ == "AsyncAdapt_aiosqlite_cursor"
    assert {"_adapt_connection", "_connection", "_cursor", "_rows", "_soft_closed_memoized"} <= set(
        AsyncAdapt_dbapi_cursor.__slots__
    )
    for name in ("_execute_async", "_executemany_async", "fetchall", "fetchone", "fetchmany"):
        assert callable(getattr(AsyncAdapt_dbapi_cursor, name))
    assert "_rows" in AsyncAdapt_dbapi_cursor.fetchall.__code__.co_names
    assert {"_execute", "_conn"} <= set(dir(aiosqlite.Connection))
    assert sqlite_driver.DBAPI.paramstyle == "qmark"
