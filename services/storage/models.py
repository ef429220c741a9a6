"""The read model's tables, as SQLAlchemy typed declarative models.

The schema itself is created by the Alembic migrations (`migrations/versions/`), never by
`create_all`; these classes must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite keeps no zone with a DATETIME, so values are normalised to UTC on the way in
    and tagged UTC on the way out; PostgreSQL stores `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Every table of the read model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    """A project: a tree of versions, each one generation."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    latest_version: Mapped[int] = mapped_column(Integer, default=0)


class Generation(Base):
    """One generation (one version of a project), as the fold of its events says."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_generations_version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    owner: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_generation_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    locked_paths: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    error_phase: Mapped[str | None] = mapped_column(String(255))
    error_kind: Mapped[str | None] = mapped_column(String(255))
    retryable: Mapped[bool] = mapped_column(Boolean)
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    llm_calls: Mapped[int] = mapped_column(Integer)
    phase_durations: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_seq: Mapped[int] = mapped_column(Integer)
    last_stream_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Blob(Base):
    """One file content, stored once however many versions contain it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class GenerationFile(Base):
    """One file of one version: its path and the blob holding its content."""

    __tablename__ = "generation_files"

    generation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("generations.id"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("blobs.sha256"))
    size: Mapped[int] = mapped_column(BigInteger)
    phase: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(32))


class EventRecord(Base):
    """The audit index: every projected event, its file content left to the blobs."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_generation_id", "generation_id"),)

    stream_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    generation_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    progress: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))


class ProjectionPosition(Base):
    """The last stream sequence a consumer has applied, committed with what it applied."""

    __tablename__ = "projection_positions"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream_seq: Mapped[int] = mapped_column(BigInteger)


# The tables themselves, typed as tables, for Core statements.
projects_table = cast(Table, Project.__table__)
generations_table = cast(Table, Generation.__table__)
blobs_table = cast(Table, Blob.__table__)
generation_files_table = cast(Table, GenerationFile.__table__)
events_table = cast(Table, EventRecord.__table__)
positions_table = cast(Table, ProjectionPosition.__table__)
