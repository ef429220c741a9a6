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

import msgspec
from nats.js import JetStreamContext

from contracts.state import GenerationState, GenerationSummary, fold
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
        if state is None or state.summary.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return state

    async def status(self, generation_id: str, owner: str) -> GenerationStatus:
        """Where a generation stands; never 404 right after the POST that created it."""
        view, target = await self._caught_up(generation_id, CATCH_UP_WAIT_S)
        if view is not None:
            if view.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            return status_of(view)
        if target == 0:
            raise NotFound(f"There is no generation {generation_id}.")
        state = await self.state(generation_id, owner)
        return status_of(state.summary)

    async def settled(self, generation_id: str, owner: str) -> GenerationView:
        """The read model's view of a generation once it holds everything the log has."""
        view, target = await self._caught_up(generation_id, SETTLE_WAIT_S)
        if view is None:
            if target == 0:
                raise NotFound(f"There is no generation {generation_id}.")
            state = await self.log_state(generation_id)
            if state is None or state.summary.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            raise Unavailable(
                "The files of this generation are still being stored; retry in a moment."
            )
        if view.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return view


def status_of(summary: GenerationSummary) -> GenerationStatus:
    """The API's status of a generation: every field of `GenerationStatus` named like one
    of the summary's is the summary's (whether it comes from the read model or the log);
    the rest are worked out here. The one place a status is mapped."""
    error = None
    if summary.error:
        error = ErrorInfo(
            message=summary.error,
            phase=summary.error_phase,
            kind=summary.error_kind,
            retryable=summary.retryable,
        )
    return msgspec.convert(
        {
            **msgspec.structs.asdict(summary),
            "duration_ms": _duration_ms(summary.started_at, summary.finished_at),
            "error": error,
            "stream_url": f"/generations/{summary.generation_id}/stream",
        },
        GenerationStatus,
        from_attributes=True,  # the nested Structs (verification) as they are
    )
