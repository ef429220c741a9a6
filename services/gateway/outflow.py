"""What SSE streams may hold unsent, for clients that read slowly or not at all.

A stream writes its events in writes of at most `max_write_bytes`; the server accepts a
write only once the connection's previous bytes have mostly left (uvicorn's flow control),
so a stream whose client stops reading holds about two writes unsent and waits inside the
next one. `OutflowBudget` keeps the streams that are inside a write (oldest first), and its
watchdog, a single task per gateway:

- cuts a stream whose write has waited `write_timeout_s`: its connection is aborted, which
  frees what it held; the client reconnects with `Last-Event-ID` when it reads again;
- measures the bytes those streams hold unsent, and while the sum is above
  `max_unsent_bytes`, cuts the longest-waiting ones first.

New streams are refused (503 + Retry-After) beyond `max_streams` open streams, or while the
unsent bytes are over their cap. A stream pays one clock read and one dict entry per write
(a write carries a whole batch of events), nothing per event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from services.common import metrics
from services.common.logs import get_logger
from services.gateway.errors import Unavailable

log = get_logger(__name__)

RETRY_AFTER_S = 5


class Writer(Protocol):
    """A stream as the budget sees it."""

    generation_id: str
    write_started: float
    pending: int

    def buffered(self) -> int:
        """Bytes the connection holds that the client has not taken yet."""
        ...

    def cut(self, reason: str) -> None:
        """Close the stream's connection now, dropping what it holds."""
        ...


class OutflowBudget:
    """The gateway-wide caps on SSE streams and their unsent bytes, and the write deadline."""

    def __init__(
        self,
        *,
        max_streams: int = 0,
        max_unsent_bytes: int = 0,
        max_write_bytes: int = 64 * 1024,
        write_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_streams = max_streams
        self.max_unsent_bytes = max_unsent_bytes
        self.max_write_bytes = max(1, max_write_bytes)
        self.write_timeout_s = write_timeout_s
        self.clock = clock
        self.open = 0
        self.unsent = 0
        self.writing: dict[Writer, None] = {}
        """The streams inside a write, in the order their writes began (oldest first)."""

    @property
    def period_s(self) -> float:
        """How often the watchdog looks."""
        return min(1.0, max(0.05, self.write_timeout_s / 4))

    def admit(self) -> Callable[[], None]:
        """Count a new stream, or raise 503 beyond a cap; returns its (idempotent) release."""
        if self.max_streams > 0 and self.open >= self.max_streams:
            metrics.sse_refused.labels(reason="streams").inc()
            raise Unavailable(
                f"This gateway already serves {self.open} event streams, the most it allows; "
                f"try again in {RETRY_AFTER_S} s.",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.max_unsent_bytes > 0 and self.unsent > self.max_unsent_bytes:
            metrics.sse_refused.labels(reason="unsent_bytes").inc()
            raise Unavailable(
                "This gateway's event streams are waiting for slow clients; "
                f"try again in {RETRY_AFTER_S} s.",
                retry_after_s=RETRY_AFTER_S,
            )
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1

        return release

    def check(self) -> None:
        """Cut the streams past the write deadline, then the longest-waiting ones while the
        unsent bytes are over their cap; update `unsent`."""
        now = self.clock()
        waiting = list(self.writing)
        held = {writer: writer.pending + writer.buffered() for writer in waiting}
        unsent = sum(held.values())
        for writer in waiting:
            waited = now - writer.write_started
            if waited >= self.write_timeout_s > 0:
                reason = "stalled"
            elif 0 < self.max_unsent_bytes < unsent and waited >= self.period_s:
                reason = "shed"
            else:
                break  # the rest began their writes later still
            del self.writing[writer]
            writer.cut(reason)
            metrics.sse_cut.labels(reason=reason).inc()
            unsent -= held[writer]
            log.info(
                "SSE stream for generation {generation_id} cut: its client did not read "
                "for {waited:.1f} s ({reason})",
                generation_id=writer.generation_id,
                waited=waited,
                reason=reason,
                held_bytes=held[writer],
            )
        self.unsent = unsent
        metrics.sse_unsent_bytes.set(unsent)

    async def run(self) -> None:
        """The watchdog: `check` every `period_s`, until cancelled."""
        while True:
            await asyncio.sleep(self.period_s)
            self.check()
