"""Bulk inserts: many rows per statement, ignoring or replacing duplicates, in each dialect."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Insert, Table, insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


async def insert_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, on_conflict: str = ""
) -> None:
    """Insert `rows` (every column of `table` each).

    `on_conflict`: "" (fail), "nothing" (keep the row there) or "update" (replace it). On
    SQLite the rows go as multi-row `INSERT … VALUES (…), (…)` statements of plain values,
    each through the bind processor SQLAlchemy itself uses for its column: SQLAlchemy's
    per-row parameter handling was a quarter of the projector's own time, and an
    executemany hands the GIL back and forth between the driver's thread and the event
    loop once per row. Other databases take the Core statement (one executemany).
    """
    if conn.dialect.name != "sqlite":
        statement: Insert
        if on_conflict == "nothing":
            statement = _insert_ignoring_duplicates(conn, table)
        elif on_conflict == "update":
            statement = upsert(conn, table)
        else:
            statement = insert(table)
        await conn.execute(statement, rows)
        return
    columns, processors = _sqlite_columns(conn.dialect, table)
    per_statement = max(1, SQLITE_MAX_PARAMETERS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = [
            row[column] if process is None else process(row[column])
            for row in chunk
            for column, process in zip(columns, processors, strict=True)
        ]
        await conn.exec_driver_sql(
            _sqlite_insert_sql(table, columns, on_conflict, len(chunk)), tuple(values)
        )


SQLITE_MAX_PARAMETERS = 999
"""Host parameters per statement: SQLite's limit before 3.32 (32,766 since)."""
_sqlite_column_cache: dict[tuple[Dialect, str], tuple[tuple[str, ...], list[Any]]] = {}


def _sqlite_columns(dialect: Dialect, table: Table) -> tuple[tuple[str, ...], list[Any]]:
    """A table's column names and each one's bind processor (or None), made once."""
    key = (dialect, table.name)
    if key not in _sqlite_column_cache:
        _sqlite_column_cache[key] = (
            tuple(column.name for column in table.columns),
            [column.type.dialect_impl(dialect).bind_processor(dialect) for column in table.columns],
        )
    return _sqlite_column_cache[key]


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
