"""Read-only queries of the read model: what the gateway imports.

Nothing here writes. Every method opens a connection, reads, and lets it roll back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, select, text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from contracts.audit import StoredLink
from contracts.state import GenerationSummary
from contracts.streams import STORAGE_CONSUMER
from services.storage.models import (
    blobs_table,
    events_table,
    generation_files_table,
    generations_table,
    positions_table,
    projects_table,
)
from services.storage.rows import from_row


class GenerationView(GenerationSummary, kw_only=True):
    """One generation as the read model holds it: the fold's summary (its row, with the
    project's name), and how far the projection has got."""

    last_stream_seq: int = 0
    updated_at: datetime | None = None


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a version (its content is fetched separately)."""

    path: str
    size: int
    sha256: str
    phase: str
    origin: str


class ProjectView(msgspec.Struct, frozen=True, kw_only=True):
    """A project and its versions (each its generation's summary), sorted by version."""

    project_id: str
    name: str
    owner: str
    created_at: datetime
    latest_version: int
    versions: list[GenerationSummary]

    @property
    def id(self) -> str:
        """The project's id (the same as `project_id`)."""
        return self.project_id


class EventEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the audit index; `body` is the event without any file content."""

    stream_seq: int
    seq: int
    type: str
    at: datetime
    progress: int | None
    body: dict[str, Any]
    hash: str


class ReadModel:
    """Read-only access to the projected generations, files, events and projects."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _all(self, query: Executable) -> Sequence[Row[Any]]:
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).all()

    async def _first(self, query: Executable) -> Row[Any] | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first()

    async def generation(self, generation_id: str) -> GenerationView | None:
        """One generation with its project's name, or None."""
        query = (
            select(generations_table, projects_table.c.name.label("project_name"))
            .join(projects_table, projects_table.c.id == generations_table.c.project_id)
            .where(generations_table.c.id == generation_id)
        )
        row = await self._first(query)
        return None if row is None else from_row(row._mapping, GenerationView)

    async def files(self, generation_id: str) -> list[FileEntry]:
        """The files of a version, sorted by path."""
        query = (
            select(generation_files_table)
            .where(generation_files_table.c.generation_id == generation_id)
            .order_by(generation_files_table.c.path)
        )
        rows = await self._all(query)
        return [_file_entry(row) for row in rows]

    async def file(self, generation_id: str, path: str) -> tuple[FileEntry, bytes] | None:
        """One file of a version and its content, or None."""
        query = (
            select(generation_files_table, blobs_table.c.content)
            .join(blobs_table, blobs_table.c.sha256 == generation_files_table.c.sha256)
            .where(
                generation_files_table.c.generation_id == generation_id,
                generation_files_table.c.path == path,
            )
        )
        row = await self._first(query)
        return None if row is None else (_file_entry(row), bytes(row.content))

    async def contents(self, generation_id: str) -> dict[str, bytes]:
        """path → content of every file of a version (for archives and diffs)."""
        query = (
            select(generation_files_table.c.path, blobs_table.c.content)
            .join(blobs_table, blobs_table.c.sha256 == generation_files_table.c.sha256)
            .where(generation_files_table.c.generation_id == generation_id)
            .order_by(generation_files_table.c.path)
        )
        rows = await self._all(query)
        return {row.path: bytes(row.content) for row in rows}

    async def events(self, generation_id: str) -> list[EventEntry]:
        """The audit index of a generation, in stream order."""
        query = (
            select(events_table)
            .where(events_table.c.generation_id == generation_id)
            .order_by(events_table.c.stream_seq)
        )
        rows = await self._all(query)
        return [msgspec.convert(dict(row._mapping), EventEntry, strict=False) for row in rows]

    async def blobs(self, names: Iterable[str]) -> dict[str, bytes]:
        """sha256 → stored content, of those of `names` the read model holds."""
        wanted = sorted(set(names))
        found: dict[str, bytes] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                query = select(blobs_table.c.sha256, blobs_table.c.content).where(
                    blobs_table.c.sha256.in_(wanted[start : start + 500])
                )
                found.update((row.sha256, bytes(row.content)) for row in await conn.execute(query))
        return found

    async def stored_links(self, entries: list[EventEntry]) -> list[StoredLink]:
        """Audit rows as the events were published (file contents put back from their
        blobs), each with the hash stored beside it: what `verify_chain` checks."""
        blobs = await self.blobs(
            str(e.body.get("sha256")) for e in entries if e.type == "file.written"
        )
        links = []
        for entry in entries:
            body = entry.body
            blob = blobs.get(str(body.get("sha256"))) if entry.type == "file.written" else None
            if blob is not None and "content" not in body:
                body = {**body, "content": blob.decode("utf-8", "surrogateescape")}
            links.append(
                StoredLink(
                    stream_seq=entry.stream_seq,
                    data=msgspec.json.encode(body),
                    stored_hash=entry.hash,
                )
            )
        return links

    async def projects(self, owner: str) -> list[ProjectView]:
        """Every project of an owner with its versions, the newest project first."""
        async with self.engine.connect() as conn:
            projects = (
                await conn.execute(
                    select(projects_table)
                    .where(projects_table.c.owner == owner)
                    .order_by(projects_table.c.created_at.desc(), projects_table.c.id)
                )
            ).all()
            versions = (
                await conn.execute(
                    _versions_query().where(
                        generations_table.c.project_id.in_(
                            select(projects_table.c.id).where(projects_table.c.owner == owner)
                        )
                    )
                )
            ).all()
        by_project: dict[str, list[GenerationSummary]] = {}
        for row in versions:
            by_project.setdefault(row.project_id, []).append(_version_entry(row))
        return [_project_view(row, by_project.get(row.id, [])) for row in projects]

    async def project(self, project_id: str) -> ProjectView | None:
        """One project with its versions, or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(projects_table).where(projects_table.c.id == project_id))
            ).first()
            if row is None:
                return None
            versions = (
                await conn.execute(
                    _versions_query().where(generations_table.c.project_id == project_id)
                )
            ).all()
        return _project_view(row, [_version_entry(v) for v in versions])

    async def storage_stats(self) -> dict[str, int]:
        """Blobs stored against files listed: what content addressing saves.

        `blobs` and `blob_bytes` are what is stored; `files` and `file_bytes` what every
        version lists; `saved_bytes` the difference.
        """
        async with self.engine.connect() as conn:
            blobs, blob_bytes = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(blobs_table.c.size), 0))
                )
            ).one()
            files, file_bytes = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(generation_files_table.c.size), 0))
                )
            ).one()
        return {
            "blobs": int(blobs),
            "blob_bytes": int(blob_bytes),
            "files": int(files),
            "file_bytes": int(file_bytes),
            "saved_bytes": int(file_bytes) - int(blob_bytes),
        }

    async def ping(self) -> None:
        """Raise unless the database answers."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def applied_stream_seq(self, consumer: str = STORAGE_CONSUMER) -> int:
        """The stream sequence a projector has applied up to (0 before its first batch)."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(positions_table.c.stream_seq).where(
                        positions_table.c.consumer == consumer
                    )
                )
            ).scalar()
        return int(value or 0)


def _versions_query() -> Any:
    return select(generations_table).order_by(
        generations_table.c.project_id, generations_table.c.version
    )


def _file_entry(row: Row[Any]) -> FileEntry:
    return FileEntry(
        path=row.path, size=row.size, sha256=row.sha256, phase=row.phase, origin=row.origin
    )


def _version_entry(row: Row[Any]) -> GenerationSummary:
    return from_row(row._mapping, GenerationSummary)


def _project_view(row: Row[Any], versions: list[GenerationSummary]) -> ProjectView:
    return ProjectView(
        project_id=row.id,
        name=row.name,
        owner=row.owner,
        created_at=row.created_at,
        latest_version=row.latest_version,
        versions=versions,
    )
