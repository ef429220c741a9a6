"""SQLAlchemy's aiosqlite adaptation with one trip to the driver's thread per statement.

aiosqlite runs every call on its connection's own thread; SQLAlchemy's adapted cursor makes
up to four such calls per statement (open a cursor, execute, fetch the rows, close it),
each a hand-over to that thread and back to the event loop, which on a busy machine waits
for a core and for the GIL. In B6's 50 concurrent generations (6 rounds and the warm-ups)
the projector made 2,973 calls and awaited them 1.93 s in all, for 0.87 s of SQLite's own
work; with `OneTripCursor`, which does the four on the driver's thread in one call and
keeps what the cursor said (rows, description, row count, last row id) for SQLAlchemy to
read, 1,007 calls awaited 1.67 s for 0.96 s.

It is the same driver, the same SQL and the same transactions; only the hand-overs are
fewer. `create_engine` in db.py passes `DBAPI` as the engine's `module`, a documented
option for an alternative DBAPI. Server-side cursors (`stream_results`) keep SQLAlchemy's
own. The SQLAlchemy and aiosqlite internals it relies on are checked by
tests/storage/test_sqlite_driver.py, so an upgrade that moves them fails there.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

Outcome = tuple[Any, int, int | None, list[Any]]
"""What a statement left on its cursor: description, row count, last row id, rows."""


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, *, many: bool) -> Outcome:
    """Execute one statement on a cursor of its own, on the driver's thread, and close it."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's adapted aiosqlite cursor, each statement one call on the driver's thread."""

    __slots__ = ("_outcome",)

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No driver cursor is opened here (SQLAlchemy's opens one: a trip of its own).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._outcome: Outcome = (None, -1, None, [])

    @property
    def description(self) -> Any:
        return self._outcome[0]

    @property
    def rowcount(self) -> int:
        return self._outcome[1]

    @property
    def lastrowid(self) -> int:
        return self._outcome[2]  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._call(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._call(operation, seq_of_parameters, many=True)

    async def _call(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            self._outcome = await connection._execute(
                _run, connection._conn, operation, parameters, many=many
            )
        self._rows = collections.deque(self._outcome[3])

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted aiosqlite connection, its cursors `OneTripCursor`s."""

    __slots__ = ()
    _cursor_cls = OneTripCursor  # type: ignore[assignment]  # a subclass of the one it replaces


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's adapted aiosqlite module, its connections `OneTripConnection`s."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


DBAPI = OneTripDBAPI(aiosqlite, sqlite3)
"""The module to give `create_async_engine(..., module=DBAPI)` for a `sqlite+aiosqlite` URL."""
