"""What the gateway reads: the read model, checked against the log so it never lies.

The read model (storage's projection) may lag the log by a few milliseconds, or by much
more if storage is down. Every read first asks the stream for the generation's last
sequence. A status read that finds the read model behind waits a moment for it, then
folds the log itself; a read of a version's files waits for the read model to hold the
whole version (or answers 503 with Retry-After), so a zip never misses a file.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from nats.js import JetStreamContext

from contracts.state import GenerationState, fold
from services.common.eventlog import last_stream_seq, read_generation
from services.gateway.errors import NotFound, Unavailable
from services.gateway.schemas import ErrorInfo, GenerationStatus
from services.storage.queries import GenerationView, ReadModel

CATCH_UP_WAIT_S = 2.0
SETTLE_WAIT_S = 8.0


def _duration_ms(started: datetime | None, finished: datetime | None) -> int | None:
    if started is None or finished is None:
        return None
    return int((finished - started).total_seconds() * 1000)


def stream_url(generation_id: str, token: str) -> str:
    """The relative URL of a generation's SSE stream with its token."""
    return f"/generations/{generation_id}/stream?token={token}"


class Views:
    """Reads of generations and their versions, consistent with the log."""

    def __init__(self, js: JetStreamContext, read_model: ReadModel) -> None:
        self.js = js
        self.read_model = read_model

    async def log_state(self, generation_id: str) -> GenerationState | None:
        """The generation folded from its log (file contents dropped), or None."""
        events = await read_generation(self.js, generation_id)
        return fold((e.event for e in events), keep_content=False)

    async def _caught_up(
        self, generation_id: str, wait_s: float
    ) -> tuple[GenerationView | None, int]:
        target = await last_stream_seq(self.js, generation_id)
        deadline = time.monotonic() + wait_s
        while True:
            view = await self.read_model.generation(generation_id)
            if target == 0 or (view is not None and view.last_stream_seq >= target):
                return view, target
            if time.monotonic() >= deadline:
                return None, target
            await asyncio.sleep(0.05)

    async def state(self, generation_id: str, owner: str) -> GenerationState:
        """The folded state of a generation the caller owns (from the log), or NotFound."""
        state = await self.log_state(generation_id)
        if state is None or state.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return state

    async def status(self, generation_id: str, owner: str) -> GenerationStatus:
        """Where a generation stands; never 404 right after the POST that created it."""
        view, target = await self._caught_up(generation_id, CATCH_UP_WAIT_S)
        if view is not None:
            if view.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            return status_from_view(view)
        if target == 0:
            raise NotFound(f"There is no generation {generation_id}.")
        state = await self.state(generation_id, owner)
        return status_from_state(state)

    async def settled(self, generation_id: str, owner: str) -> GenerationView:
        """The read model's view of a generation once it holds everything the log has."""
        view, target = await self._caught_up(generation_id, SETTLE_WAIT_S)
        if view is None:
            if target == 0:
                raise NotFound(f"There is no generation {generation_id}.")
            state = await self.log_state(generation_id)
            if state is None or state.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            raise Unavailable(
                "The files of this generation are still being stored; retry in a moment."
            )
        if view.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return view


def status_from_view(view: GenerationView) -> GenerationStatus:
    """The API's status of a generation from the read model."""
    error = None
    if view.error:
        error = ErrorInfo(
            message=view.error,
            phase=view.error_phase,
            kind=view.error_kind,
            retryable=view.retryable,
        )
    return GenerationStatus(
        generation_id=view.generation_id,
        project_id=view.project_id,
        project_name=view.project_name,
        version=view.version,
        kind=view.kind,
        parent_generation_id=view.parent_generation_id,
        status=view.status,  # type: ignore[arg-type]
        progress=view.progress,
        phase=view.phase,
        provider=view.provider,
        model=view.model,
        prompt=view.prompt,
        locked_paths=list(view.locked_paths),
        file_count=view.file_count,
        total_bytes=view.total_bytes,
        tokens_in=view.tokens_in,
        tokens_out=view.tokens_out,
        llm_calls=view.llm_calls,
        phase_durations_ms=dict(view.phase_durations),
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        duration_ms=_duration_ms(view.started_at, view.finished_at),
        error=error,
        stream_url=f"/generations/{view.generation_id}/stream",
    )


def status_from_state(state: GenerationState) -> GenerationStatus:
    """The API's status of a generation folded from its log."""
    error = None
    if state.error:
        error = ErrorInfo(
            message=state.error,
            phase=state.error_phase,
            kind=state.error_kind,
            retryable=state.retryable,
        )
    return GenerationStatus(
        generation_id=state.generation_id,
        project_id=state.project_id,
        project_name=state.project_name,
        version=state.version,
        kind=state.kind,
        parent_generation_id=state.parent_generation_id,
        status=state.status,
        progress=state.progress,
        phase=state.phase,
        provider=state.provider,
        model=state.model,
        prompt=state.prompt,
        locked_paths=list(state.locked_paths),
        file_count=len(state.files),
        total_bytes=state.total_bytes,
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        llm_calls=state.llm_calls,
        phase_durations_ms=dict(state.phase_durations_ms),
        created_at=state.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        duration_ms=_duration_ms(state.started_at, state.finished_at),
        error=error,
        stream_url=f"/generations/{state.generation_id}/stream",
    )
