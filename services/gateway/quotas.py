"""Per-key abuse limits: a token bucket for new generations, a cap on open SSE streams."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from services.gateway.errors import TooManyRequests
from services.gateway.outflow import OutflowBudget


class GenerationRateLimit:
    """A token bucket per user: `per_minute` new generations, bursts of up to `burst`.

    Creating and iterating both draw from it. `per_minute <= 0` turns the limit off.
    """

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, user: str) -> None:
        """Spend one generation of `user`'s allowance, or raise 429 with Retry-After."""
        if self.rate <= 0:
            return
        now = self.clock()
        tokens, then = self._buckets.get(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / self.rate)
            self._buckets[user] = (tokens, now)
            raise TooManyRequests(
                f"Too many new generations for this API key: at most {self.burst} at once and "
                f"{self.rate * 60:g} per minute. Try again in {wait} s.",
                retry_after_s=wait,
            )
        self._buckets[user] = (tokens - 1.0, now)


class StreamSlots:
    """Counts the open SSE streams of each user and refuses one over `per_user`."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[str, int] = {}

    def full(self, user: str) -> bool:
        """Whether `user` has no slot left (a new stream would be refused, 429)."""
        return self.per_user > 0 and self._open.get(user, 0) >= self.per_user

    def acquire(self, user: str) -> Callable[[], None]:
        """Take a slot for `user` (429 when all are in use); returns its release function."""
        count = self._open.get(user, 0)
        if self.full(user):
            raise TooManyRequests(
                f"This API key already has {count} open event streams, the most allowed; "
                "close one (or wait for a generation to end) and try again.",
                retry_after_s=5,
            )
        self._open[user] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open.get(user, 1) - 1
            if left > 0:
                self._open[user] = left
            else:
                self._open.pop(user, None)

        return release


def admit_stream(outflow: OutflowBudget, slots: StreamSlots, owner: str) -> Callable[[], None]:
    """Count a new SSE stream against the gateway-wide caps (503 beyond) and the owner's
    slots (429 beyond); returns the release of both."""
    release_stream = outflow.admit()
    try:
        release_slot = slots.acquire(owner)
    except BaseException:
        release_stream()
        raise

    def release() -> None:
        release_slot()
        release_stream()

    return release
