"""The gateway's answers as the CLI reads them: only the fields it uses, so a newer gateway
that adds fields never breaks an older `kiln` (msgspec ignores unknown fields)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Accepted(msgspec.Struct, frozen=True):
    """`201` of POST /generations and /generations/iterate."""

    generation_id: str
    project_id: str
    version: int
    stream_url: str
    parent_generation_id: str | None = None


class StreamToken(msgspec.Struct, frozen=True):
    """A fresh SSE token (POST /generations/{id}/stream-token)."""

    generation_id: str
    stream_url: str


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a generation failed or was cancelled."""

    message: str
    phase: str | None = None


class GenerationStatus(msgspec.Struct, frozen=True):
    """GET /generations/{id}."""

    generation_id: str
    project_id: str
    project_name: str
    version: int
    status: str
    progress: int
    phase: str | None
    provider: str
    file_count: int
    total_bytes: int
    model: str | None = None
    parent_generation_id: str | None = None
    duration_ms: int | None = None
    error: ErrorInfo | None = None

    @property
    def is_terminal(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in ("completed", "failed", "cancelled")


class VersionInfo(msgspec.Struct, frozen=True):
    """One version of a project."""

    generation_id: str
    version: int
    status: str
    progress: int
    file_count: int
    parent_generation_id: str | None = None
    created_at: datetime | None = None


class ProjectInfo(msgspec.Struct, frozen=True):
    """A project and its versions."""

    project_id: str
    name: str
    latest_version: int
    versions: list[VersionInfo]


class ProjectList(msgspec.Struct, frozen=True):
    """GET /projects."""

    projects: list[ProjectInfo]


class AuditEvent(msgspec.Struct, frozen=True):
    """One entry of a generation's audit log; `event` is the event as stored (no contents)."""

    stream_seq: int
    seq: int
    type: str
    at: datetime
    event: dict[str, Any]
    progress: int | None = None


class AuditLog(msgspec.Struct, frozen=True):
    """GET /generations/{id}/events."""

    generation_id: str
    count: int
    events: list[AuditEvent]
