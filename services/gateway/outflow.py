"""What SSE streams may hold unsent, for clients that read slowly or not at all.

A stream writes its events in writes of at most `max_write_bytes`; the server accepts a
write only once the connection's previous bytes have mostly left (uvicorn's flow control),
so a stream whose client stops reading holds about two writes unsent and waits inside the
next one. `OutflowBudget` keeps the streams that are inside a write (oldest first), and its
watchdog, a single task per gateway:

- cuts a stream whose write has waited `write_timeout_s`: its connection is aborted, which
  frees what it held; the client reconnects with `Last-Event-ID` when it reads again;
- measures the bytes held by the streams whose client has stopped reading — a write that
  has waited `STALLED_AFTER_S` (or half the deadline, if shorter) — and while the sum is
  above `max_unsent_bytes`, cuts the longest-waiting ones first.

A stream inside a write that its client is taking is not counted: a herd of a thousand
clients replaying at once holds two writes each for a moment, and that is the gateway
working, not clients holding it up. Nor is a client that reads slowly but keeps taking
each write within the 5 s: what it holds is bounded by the stream itself (two writes, or
one event larger than a write), so the gateway's worst case is that times `max_streams`,
as it is for a burst of non-readers in their first 5 s. The stalled streams over the cap
are cut at once, so
new streams need no refusal for bytes: they are refused (503 + Retry-After) only beyond
`max_streams` open streams. A stream pays one clock read and one dict entry per write
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
STALLED_AFTER_S = 5.0
"""A write its client has not finished taking in this long counts as held for a client
that does not read (normal clients take a 64 KiB write in milliseconds, and in well under a
second on a machine saturated by a herd)."""


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

    @property
    def stalled_after_s(self) -> float:
        """How long a write waits before its stream counts against `max_unsent_bytes`."""
        if self.write_timeout_s > 0:
            return max(self.period_s, min(STALLED_AFTER_S, self.write_timeout_s / 2))
        return STALLED_AFTER_S

    @property
    def full(self) -> bool:
        """Whether a new stream would be refused (503)."""
        return self.max_streams > 0 and self.open >= self.max_streams

    def admit(self) -> Callable[[], None]:
        """Count a new stream, or raise 503 beyond `max_streams`; returns its (idempotent) release."""
        if self.full:
            metrics.sse_refused.labels(reason="streams").inc()
            raise Unavailable(
                f"This gateway already serves {self.open} event streams, the most it allows; "
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
        """Cut the streams past the write deadline, then the longest-waiting stalled ones
        while the stalled streams' unsent bytes are over their cap; update `unsent`."""
        now = self.clock()
        stalled_after_s = self.stalled_after_s
        stalled: list[tuple[Writer, float]] = []
        for writer in self.writing:
            waited = now - writer.write_started
            if waited < stalled_after_s:
                break  # the rest began their writes later still
            stalled.append((writer, waited))
        held = {writer: writer.pending + writer.buffered() for writer, _ in stalled}
        unsent = sum(held.values())
        for writer, waited in stalled:
            if waited >= self.write_timeout_s > 0:
                reason = "stalled"
            elif 0 < self.max_unsent_bytes < unsent:
                reason = "shed"
            else:
                break
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
