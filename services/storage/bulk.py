"""Bulk inserts: many rows per statement, ignoring or replacing duplicates, in each dialect."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Insert, Table, insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from services.storage.models import UtcDateTime

BoundRow = tuple[Any, ...] | dict[str, Any]
"""A row ready for `insert_bound`: on SQLite its values in column order, each already through
its column's bind processor; on other databases the row's dict itself."""


def bind_row(dialect: Dialect, table: Table, row: dict[str, Any]) -> BoundRow:
    """`row` (every column of `table`) as `insert_bound` sends it to `dialect`'s database.

    Pure work, so the projector does it while decoding a batch, ahead of its transaction.
    """
    if dialect.name != "sqlite":
        return row
    columns, processors = _sqlite_columns(dialect, table)
    values = list(map(row.__getitem__, columns))
    for index, process in processors:
        values[index] = process(values[index])
    return tuple(values)


async def insert_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, on_conflict: str = ""
) -> None:
    """Insert `rows` (every column of `table` each).

    `on_conflict`: "" (fail), "nothing" (keep the row there) or "update" (replace it). On
    SQLite the rows go as multi-row `INSERT … VALUES (…), (…)` statements of plain values,
    each through the bind processor SQLAlchemy itself uses for its column: SQLAlchemy's
    per-row parameter handling was a quarter of the projector's own time, and an
    executemany hands the GIL back and forth between the driver's thread and the event
    loop once per row; as many rows go in one statement as SQLite takes parameters. Other
    databases take the Core statement (one executemany).
    """
    await insert_bound(
        conn, table, [bind_row(conn.dialect, table, row) for row in rows], on_conflict=on_conflict
    )


async def insert_bound(
    conn: AsyncConnection, table: Table, rows: list[BoundRow], *, on_conflict: str = ""
) -> None:
    """`insert_many` of rows already made by `bind_row` for this connection's dialect."""
    if conn.dialect.name != "sqlite":
        statement: Insert
        if on_conflict == "nothing":
            statement = _insert_ignoring_duplicates(conn, table)
        elif on_conflict == "update":
            statement = upsert(conn, table)
        else:
            statement = insert(table)
        dicts = [row for row in rows if isinstance(row, dict)]
        assert len(dicts) == len(rows), "rows bound for another dialect"
        await conn.execute(statement, dicts)
        return
    columns, _ = _sqlite_columns(conn.dialect, table)
    per_statement = max(1, SQLITE_MAX_PARAMETERS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = tuple(value for row in chunk for value in row)
        await conn.exec_driver_sql(
            _sqlite_insert_sql(table, columns, on_conflict, len(chunk)), values
        )


SQLITE_MAX_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""Host parameters per statement: SQLite's limit (999 before 3.32, 32,766 since). A batch's
rows of one table then go as one statement: each statement is a round trip to the driver's
thread, which costs more than the statement itself on a busy machine (the thread waits
for the GIL and for a core, and so does the event loop to learn the statement ended)."""
_sqlite_column_cache: dict[
    tuple[Dialect, str], tuple[tuple[str, ...], tuple[tuple[int, Any], ...]]
] = {}


def _sqlite_columns(
    dialect: Dialect, table: Table
) -> tuple[tuple[str, ...], tuple[tuple[int, Any], ...]]:
    """A table's column names, and the index and bind processor of each column that has
    one, made once."""
    key = (dialect, table.name)
    if key not in _sqlite_column_cache:
        processors = [
            sqlite_utc_text
            if isinstance(column.type, UtcDateTime)
            else column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in table.columns
        ]
        _sqlite_column_cache[key] = (
            tuple(column.name for column in table.columns),
            tuple((index, process) for index, process in enumerate(processors) if process),
        )
    return _sqlite_column_cache[key]


def sqlite_utc_text(value: datetime | None) -> str | None:
    """A `UtcDateTime` as SQLAlchemy binds it for SQLite (UTC, naive, `YYYY-MM-DD
    HH:MM:SS.ffffff`), in one step instead of its two processors and a format dict (a
    fifth of binding an audit row)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return _SQLITE_DATETIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
"""SQLAlchemy's default storage format of a SQLite DATETIME."""


@lru_cache(maxsize=64)
def _sqlite_insert_sql(table: Table, columns: tuple[str, ...], on_conflict: str, rows: int) -> str:
    row = f"({', '.join('?' for _ in columns)})"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"
    if on_conflict == "nothing":
        sql += " ON CONFLICT DO NOTHING"
    elif on_conflict == "update":
        keys = [column.name for column in table.primary_key.columns]
        sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(
            f"{column} = excluded.{column}" for column in columns if column not in keys
        )
    return sql


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    """`INSERT … ON CONFLICT DO NOTHING` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no duplicate-ignoring insert for {conn.dialect.name}")


def upsert(conn: AsyncConnection, table: Table) -> Insert:
    """Insert a row, or replace the one with the same primary key."""
    statement = (
        postgresql_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)
    )
    keys = list(table.primary_key.columns)
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c not in keys},
    )
