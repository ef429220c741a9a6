"""The Reporter a provider talks to: turns its reports into events of the generation."""

from __future__ import annotations

import asyncio
import math
import time

import msgspec

from contracts.events import LlmCalled, LlmRetrying, PhaseProgress, RetryReason
from services.common import metrics
from services.common.eventwriter import GenerationWriter
from services.orchestrator.providers.base import LlmCall

PROGRESS_INTERVAL_S = 0.5


class EventReporter:
    """Reports of one phase, published as `phase.progress`, `llm.called` and `llm.retrying`.

    Progress is throttled to one event every half second, so a streaming provider can
    report every chunk without flooding the log.
    """

    def __init__(
        self, writer: GenerationWriter, phase: str, progress: int, cancelled: asyncio.Event
    ) -> None:
        self.writer = writer
        self.phase = phase
        self.progress_value = progress
        self._cancelled = cancelled
        self._last_progress = -math.inf  # the monotonic clock's origin is arbitrary

    async def progress(
        self, *, bytes_received: int = 0, tokens_received: int = 0, message: str = ""
    ) -> None:
        """Publish `phase.progress` unless one went out less than half a second ago."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        await self.writer.emit(
            PhaseProgress,
            phase=self.phase,
            progress=self.progress_value,
            bytes_received=bytes_received,
            tokens_received=tokens_received,
            message=message,
        )

    async def llm_called(self, call: LlmCall) -> None:
        """Publish `llm.called`."""
        metrics.llm_latency.labels(call.provider, call.model).observe(call.latency_ms / 1000)
        metrics.llm_tokens.labels(call.provider, "in").inc(call.tokens_in)
        metrics.llm_tokens.labels(call.provider, "out").inc(call.tokens_out)
        await self.writer.emit(LlmCalled, phase=self.phase, **msgspec.structs.asdict(call))

    async def retrying(
        self, *, reason: RetryReason, delay_s: float, attempt: int, message: str
    ) -> None:
        """Publish `llm.retrying`: the page shows "rate limited, retrying in N s"."""
        await self.writer.emit(
            LlmRetrying,
            phase=self.phase,
            reason=reason,
            delay_s=round(delay_s, 3),
            attempt=attempt,
            message=message,
        )

    def cancelled(self) -> bool:
        """True once the generation has been cancelled."""
        return self._cancelled.is_set()
