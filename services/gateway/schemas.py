"""The public API's request and response bodies, kept apart from the event contracts so
the API can evolve without rewriting the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts import limits
from contracts.audit import Check
from contracts.schema import ProjectSchema
from contracts.state import Status, Verification

DiffStatus = Literal["added", "modified", "deleted"]


class CreateGeneration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Start a new project at version 1."""

    project_name: Annotated[
        str, msgspec.Meta(min_length=1, max_length=limits.MAX_PROJECT_NAME_CHARS)
    ]
    schema: ProjectSchema
    prompt: Annotated[str, msgspec.Meta(max_length=limits.MAX_PROMPT_CHARS)] = ""
    provider: str | None = None
    model: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class IterateGeneration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Make a new version of a project from any completed version."""

    parent_generation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    modification_prompt: Annotated[
        str, msgspec.Meta(min_length=1, max_length=limits.MAX_PROMPT_CHARS)
    ]
    locked_paths: Annotated[list[str], msgspec.Meta(max_length=limits.MAX_LOCKED_PATHS)] = []
    provider: str | None = None
    model: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class CancelGeneration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Why the generation is cancelled (optional)."""

    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class Accepted(msgspec.Struct, frozen=True):
    """A generation was accepted: follow it on `stream_url`."""

    generation_id: str
    project_id: str
    version: int
    status: Status
    sse_token: str
    stream_url: str
    status_url: str
    parent_generation_id: str | None = None


class StreamToken(msgspec.Struct, frozen=True):
    """A fresh SSE token for one generation."""

    generation_id: str
    sse_token: str
    stream_url: str
    expires_at: datetime


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a generation failed or was cancelled."""

    message: str
    phase: str | None
    kind: str | None
    retryable: bool


class GenerationStatus(msgspec.Struct, frozen=True):
    """Where a generation stands. A field named like one of
    `contracts.state.GenerationSummary`'s is filled from it (`views.status_of`)."""

    generation_id: str
    project_id: str
    project_name: str
    version: int
    kind: str
    parent_generation_id: str | None
    status: Status
    progress: int
    phase: str | None
    provider: str
    model: str | None
    prompt: str
    locked_paths: list[str]
    file_count: int
    total_bytes: int
    tokens_in: int
    tokens_out: int
    llm_calls: int
    phase_durations_ms: dict[str, int]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: ErrorInfo | None
    stream_url: str
    verification: Verification | None = None
    """The sandboxed run of the version's own tests (null until one starts)."""


class FileInfo(msgspec.Struct, frozen=True):
    """One file of a version."""

    path: str
    size: int
    sha256: str
    phase: str
    origin: str


class FileList(msgspec.Struct, frozen=True):
    """The files of a version."""

    generation_id: str
    version: int
    status: Status
    file_count: int
    total_bytes: int
    files: list[FileInfo]


class FileDiff(msgspec.Struct, frozen=True):
    """How one file changed against the parent."""

    path: str
    status: DiffStatus
    diff: str
    reason: str | None = None
    repair_rounds: list[int] = []
    """The repair rounds that changed this file (and were kept)."""


class DiffSummary(msgspec.Struct, frozen=True):
    """How many files were added, modified, deleted or left unchanged."""

    added: int
    modified: int
    deleted: int
    unchanged: int


class Diff(msgspec.Struct, frozen=True):
    """A version against its parent, as unified diffs per file."""

    generation_id: str
    parent_generation_id: str | None
    summary: DiffSummary
    files: list[FileDiff]


class AuditEvent(msgspec.Struct, frozen=True):
    """One event of a generation's audit log (file contents left out)."""

    stream_seq: int
    seq: int
    type: str
    at: datetime
    progress: int | None
    event: dict[str, Any]
    hash: str


class BrokenLink(msgspec.Struct, frozen=True):
    """The first event whose link in the hash chain does not hold, and which check failed:
    `hash` (its stored bytes no longer hash to the stored hash), `prev_hash` (it does not
    name the hash of the event before it), `seq_gap`, `undecodable`, or `blob` (a file
    named by sha256, in a `version.based_on` or a `file.written` without inline content,
    has no stored content, or content that hashes otherwise)."""

    stream_seq: int
    seq: int | None
    event_id: str | None
    type: str | None
    check: Check
    message: str


class ChainVerification(msgspec.Struct, frozen=True):
    """The hash chain recomputed from the read model's stored events (`?verify=true`)."""

    ok: bool
    checked: int
    verified: int
    head_hash: str
    broken: BrokenLink | None = None
    source: Literal["read_model"] = "read_model"


class AuditLog(msgspec.Struct, frozen=True):
    """A generation's events, in order; with `?verify=true`, the chain's verification."""

    generation_id: str
    count: int
    events: list[AuditEvent]
    verification: ChainVerification | None = None


class VersionInfo(msgspec.Struct, frozen=True):
    """One version of a project."""

    generation_id: str
    version: int
    parent_generation_id: str | None
    kind: str
    status: Status
    progress: int
    prompt: str
    provider: str
    file_count: int
    total_bytes: int
    created_at: datetime | None
    finished_at: datetime | None
    verification: Verification | None = None
    """The version's own tests, run by Kiln in a sandbox (null until verified)."""


class ProjectInfo(msgspec.Struct, frozen=True):
    """A project and its versions (a tree: each names its parent)."""

    project_id: str
    name: str
    created_at: datetime | None
    latest_version: int
    versions: list[VersionInfo]


class ProjectList(msgspec.Struct, frozen=True):
    """The caller's projects."""

    projects: list[ProjectInfo]


class Health(msgspec.Struct, frozen=True):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
