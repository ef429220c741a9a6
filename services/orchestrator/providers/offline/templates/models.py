"""The models phase: the database module and one SQLAlchemy model per entity."""

from __future__ import annotations

from services.orchestrator.providers.offline.layout import EntityLayout, ProjectLayout
from services.orchestrator.providers.offline.templates.common import (
    Imports,
    py,
    python_type,
    sql_type,
)
from services.orchestrator.providers.offline.templates.pyformat import (
    bracket,
    import_from,
    natural,
)

DB_MODULE = '''"""The database: engine, sessions, the declarative base and an exact decimal type."""

from __future__ import annotations

import decimal
import os
from typing import Any

from sqlalchemy import String, event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./app.db"


class Base(DeclarativeBase):
    """The base class of every model."""


class DecimalString(TypeDecorator[decimal.Decimal]):
    """An exact decimal number, stored as text (SQLite has no exact decimal type)."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """Decimal to text."""
        return None if value is None else str(decimal.Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> decimal.Decimal | None:
        """Text to Decimal."""
        return None if value is None else decimal.Decimal(value)


def database_url() -> str:
    """The database URL: `DATABASE_URL`, or the SQLite file `app.db` in the working directory."""
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`; on SQLite, foreign keys are enforced."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _enable_foreign_keys)
    return engine


def create_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The session factory of the application (objects stay usable after a commit)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_tables(engine: AsyncEngine) -> None:
    """Create every table that does not exist yet."""
    import app.models  # noqa: F401  (registers every model with Base.metadata)

    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


def _enable_foreign_keys(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
'''


DATETIME_STRING = '''

class DateTimeString(TypeDecorator[datetime.datetime]):
    """A date and time stored as ISO 8601 text, so that it comes back with the UTC offset it
    was sent with (`+02:00` stays `+02:00`; one sent without an offset stays without).

    SQLite has no time zone type, and PostgreSQL's converts every value to UTC.
    """

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """datetime to text."""
        return None if value is None else value.isoformat()

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime.datetime | None:
        """Text to datetime."""
        return None if value is None else datetime.datetime.fromisoformat(value)
'''


def db_module(project: ProjectLayout) -> str:
    """`app/db.py` (with `DateTimeString` in a project whose datetimes keep their offset)."""
    if not project.zoned:
        return DB_MODULE
    return (
        DB_MODULE.replace(
            '"""The database: engine, sessions, the declarative base and an exact decimal type."""',
            '"""The database: engine, sessions, the declarative base, an exact decimal type and a\n'
            'date and time type that keeps its UTC offset."""',
        )
        .replace("import decimal\n", "import datetime\nimport decimal\n")
        .replace("\n\ndef database_url()", DATETIME_STRING + "\n\ndef database_url()")
    )


def models_package(project: ProjectLayout) -> str:
    """`app/models/__init__.py`: imports every model so that all tables are registered."""
    names = sorted((e.module, e.name) for e in project.entities)
    lines = ['"""Every model of the project; importing this package registers all tables."""', ""]
    if project.auth:
        lines.extend(import_from("app.auth.models", ["AuthToken", "AuthUser"]))
    lines.append("from app.db import Base")
    for module, name in sorted(names, key=lambda pair: natural(pair[0])):
        lines.extend(import_from(f"app.models.{module}", [name]))
    exported = ["Base", *(name for _, name in names)]
    if project.auth:
        exported = ["AuthToken", "AuthUser", *exported]
    lines.append("")
    lines.append("__all__ = [")
    lines.extend(f"    {py(name)}," for name in sorted(exported))
    lines.append("]")
    return "\n".join(lines) + "\n"


def model_module(project: ProjectLayout, entity: EntityLayout) -> str:
    """`app/models/<entity>.py`: the SQLAlchemy model of one entity."""
    targets = sorted({m.target for m in entity.many} - {entity.name})
    taken = {entity.name, *entity.members, *targets}
    imports = Imports(taken)
    mapped = imports.name("sqlalchemy.orm", "Mapped")
    column = imports.name("sqlalchemy.orm", "mapped_column")
    base = imports.name("app.db", "Base")
    integer = imports.builtin("int")

    tables: list[str] = []
    body = [f"    __tablename__ = {py(entity.table)}", ""]
    body.append(f"    id: {mapped}[{integer}] = {column}(primary_key=True)")
    for col in entity.columns:
        kind = python_type(col, imports)
        optional = "" if col.required else " | None"
        body.extend(
            bracket(
                "    ",
                f"{col.name}: {mapped}[{kind}{optional}] = {column}",
                [sql_type(col, imports, zoned=project.zoned)],
            )
        )
    for ref in entity.refs:
        foreign_key = imports.name("sqlalchemy", "ForeignKey")
        target = project.entity(ref.target)
        on_delete = "RESTRICT" if ref.required else "SET NULL"
        optional = "" if ref.required else " | None"
        arguments = [
            f"{foreign_key}({py(target.table + '.id')}, ondelete={py(on_delete)})",
            "index=True",
            *(["unique=True"] if ref.unique else []),
        ]
        body.extend(
            bracket("    ", f"{ref.column}: {mapped}[{integer}{optional}] = {column}", arguments)
        )
    for many in entity.many:
        table = imports.name("sqlalchemy", "Table")
        sa_column = imports.name("sqlalchemy", "Column")
        foreign_key = imports.name("sqlalchemy", "ForeignKey")
        relationship = imports.name("sqlalchemy.orm", "relationship")
        target = project.entity(many.target)
        variable = f"{many.name.upper()}_TABLE"
        tables.append(
            f"{variable} = {table}(\n"
            f"    {py(many.table)},\n"
            f"    {base}.metadata,\n"
            f"    {sa_column}(\n"
            f"        {py(many.source_column)},\n"
            f'        {foreign_key}({py(entity.table + ".id")}, ondelete="CASCADE"),\n'
            "        primary_key=True,\n"
            "    ),\n"
            f"    {sa_column}(\n"
            f"        {py(many.target_column)},\n"
            f'        {foreign_key}({py(target.table + ".id")}, ondelete="CASCADE"),\n'
            "        primary_key=True,\n"
            "    ),\n"
            ")"
        )
        joins = ""
        if many.target == entity.name:
            # A self-referential list: say which column is which, and load one level.
            joins = (
                f"        primaryjoin=lambda: {entity.name}.id == {variable}.c.{many.source_column},\n"
                f"        secondaryjoin=lambda: {entity.name}.id == {variable}.c.{many.target_column},\n"
                "        join_depth=1,\n"
            )
        body.append(
            f"    {many.name}: {mapped}[{imports.builtin('list')}[{many.target}]] = {relationship}(\n"
            f"        {py(many.target)},\n"
            f"        secondary={variable},\n"
            f"{joins}"
            '        lazy="selectin",\n'
            "    )"
        )
    type_checking = ""
    if targets:
        checking = imports.name("typing", "TYPE_CHECKING")
        type_checking = f"\nif {checking}:\n" + "\n".join(
            f"    from app.models.{project.entity(t).module} import {t}" for t in targets
        )
    parts = [
        f'"""The {entity.name} model: one row of the `{entity.table}` table."""',
        "",
        "from __future__ import annotations",
        "",
        imports.render(),
    ]
    if type_checking:
        parts.append(type_checking)
    for number, table_code in enumerate(tables):
        parts.extend(["", "", table_code] if number or type_checking else ["", table_code])
    parts.extend(
        [
            "",
            "",
            f"class {entity.name}({base}):",
            f'    """One {entity.name} ({_describe(entity)})."""',
            "",
            *body,
        ]
    )
    return "\n".join(parts) + "\n"


def _describe(entity: EntityLayout) -> str:
    count = len(entity.columns)
    fields = f"{count} field{'s' if count != 1 else ''}"
    relations = len(entity.refs) + len(entity.many) + len(entity.children)
    if not relations:
        return fields
    return f"{fields}, {relations} relation{'s' if relations != 1 else ''}"
