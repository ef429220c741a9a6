"""A generation's state as the fold of its events.

The same function rebuilds a generation in the orchestrator (to resume after a crash) and
projects it in storage and the gateway, so every reader agrees on what a log means.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from contracts.events import (
    Event,
    FileDeleted,
    FileWritten,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationResumed,
    GenerationStarted,
    LlmCalled,
    LlmRetrying,
    PhaseCompleted,
    PhaseProgress,
    PhaseStarted,
)

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class FileState(msgspec.Struct):
    """One file of the version as the log has it so far."""

    path: str
    sha256: str
    size: int
    phase: str
    origin: str = "generated"
    content: str | None = None


class GenerationState(msgspec.Struct, kw_only=True):
    """Everything the log of one generation says, folded."""

    generation_id: str
    project_id: str
    owner: str = ""
    project_name: str = ""
    version: int = 0
    kind: str = "create"
    parent_generation_id: str | None = None
    provider: str = "offline"
    model: str | None = None
    prompt: str = ""
    locked_paths: list[str] = []
    request: GenerationRequested | None = None
    status: Status = "pending"
    progress: int = 0
    phase: str | None = None
    phases_started: list[str] = []
    phases_completed: list[str] = []
    phase_durations_ms: dict[str, int] = {}
    files: dict[str, FileState] = {}
    deleted: dict[str, str] = {}
    tokens_in: int = 0
    tokens_out: int = 0
    llm_calls: int = 0
    retrying: LlmRetrying | None = None
    error: str | None = None
    error_phase: str | None = None
    error_kind: str | None = None
    retryable: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_seq: int = 0

    @property
    def is_terminal(self) -> bool:
        """True once completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def total_bytes(self) -> int:
        """Bytes of every file of the version so far."""
        return sum(f.size for f in self.files.values())

    def file_contents(self) -> dict[str, str]:
        """path → content of every file whose content the fold kept."""
        return {p: f.content for p, f in self.files.items() if f.content is not None}


def new_state(event: Event) -> GenerationState:
    """The empty state of the generation an event belongs to."""
    return GenerationState(generation_id=event.generation_id, project_id=event.project_id)


def apply(state: GenerationState, event: Event, *, keep_content: bool = True) -> GenerationState:
    """`state` with one more event applied (in place; returned for convenience).

    Events after a terminal event, and events already applied (seq not above `last_seq`),
    change nothing: a replay or a redelivery is harmless.
    """
    if event.seq <= state.last_seq:
        return state
    state.last_seq = event.seq
    if state.is_terminal:
        return state
    if event.progress is not None:
        state.progress = max(state.progress, event.progress)

    match event:
        case GenerationRequested():
            state.request = event
            state.owner = event.owner
            state.project_name = event.project_name
            state.version = event.version
            state.kind = event.kind
            state.parent_generation_id = event.parent_generation_id
            state.provider = event.provider
            state.model = event.model
            state.prompt = event.prompt
            state.locked_paths = list(event.locked_paths)
            state.created_at = event.at
        case GenerationStarted():
            state.status = "running"
            state.started_at = state.started_at or event.at
            state.model = event.model or state.model
        case GenerationResumed():
            state.status = "running"
        case PhaseStarted():
            state.status = "running"
            state.phase = event.phase
            state.retrying = None
            if event.phase not in state.phases_started:
                state.phases_started.append(event.phase)
        case PhaseProgress():
            state.retrying = None
        case PhaseCompleted():
            state.retrying = None
            if event.phase not in state.phases_completed:
                state.phases_completed.append(event.phase)
            state.phase_durations_ms[event.phase] = event.duration_ms
        case FileWritten():
            state.deleted.pop(event.path, None)
            state.files[event.path] = FileState(
                path=event.path,
                sha256=event.sha256,
                size=event.size,
                phase=event.phase,
                origin=event.origin,
                content=event.content if keep_content else None,
            )
        case FileDeleted():
            state.files.pop(event.path, None)
            state.deleted[event.path] = event.reason
        case LlmCalled():
            state.llm_calls += 1
            state.tokens_in += event.tokens_in
            state.tokens_out += event.tokens_out
        case LlmRetrying():
            state.retrying = event
        case GenerationCompleted():
            state.status = "completed"
            state.progress = 100
            state.finished_at = event.at
            state.retrying = None
        case GenerationFailed():
            state.status = "failed"
            state.error = event.message
            state.error_phase = event.phase
            state.error_kind = event.error_kind
            state.retryable = event.retryable
            state.finished_at = event.at
            state.retrying = None
        case GenerationCancelled():
            state.status = "cancelled"
            state.error = event.reason or f"cancelled by {event.by}"
            state.error_phase = event.phase
            state.finished_at = event.at
            state.retrying = None
    return state


def fold(events: Iterable[Event], *, keep_content: bool = True) -> GenerationState | None:
    """The state a sequence of one generation's events describes; None for no events."""
    state: GenerationState | None = None
    for event in events:
        if state is None:
            state = new_state(event)
        apply(state, event, keep_content=keep_content)
    return state
