"""The gateway-wide budget of SSE streams: what counts as held for a client that does not
read, when streams are cut, and when new ones are refused (pure logic, a manual clock)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.gateway.errors import Unavailable
from services.gateway.outflow import STALLED_AFTER_S, OutflowBudget

KIB = 1024
WRITE = 64 * KIB


@dataclass(eq=False)
class Stream:
    """A stream inside one write: `pending` bytes of it and `held` in its connection."""

    generation_id: str = "g-1"
    write_started: float = 0.0
    pending: int = WRITE
    held: int = WRITE
    cut_for: str | None = field(default=None)

    def buffered(self) -> int:
        return self.held

    def cut(self, reason: str) -> None:
        self.cut_for = reason


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def budget_with(streams: list[Stream], clock: Clock, **caps: float) -> OutflowBudget:
    budget = OutflowBudget(clock=clock, **caps)  # type: ignore[arg-type]
    for stream in streams:
        budget.writing[stream] = None
    return budget


def test_a_herd_of_reading_clients_holds_no_unsent_bytes_and_new_streams_are_admitted() -> None:
    # 1,000 clients each inside a write of a replay (~128 MiB in all), taking it.
    clock = Clock()
    herd = [Stream(write_started=clock.now) for _ in range(1_000)]
    budget = budget_with(herd, clock, max_unsent_bytes=64 * 1024 * KIB, write_timeout_s=30)
    clock.now += STALLED_AFTER_S / 2
    budget.check()
    assert budget.unsent == 0
    assert not any(stream.cut_for for stream in herd)
    budget.admit()()


def test_streams_stalled_past_the_cap_are_shed_oldest_first_down_to_the_cap() -> None:
    clock = Clock()
    stalled = [Stream(write_started=clock.now + i) for i in range(4)]
    budget = budget_with(stalled, clock, max_unsent_bytes=3 * 2 * WRITE, write_timeout_s=600)
    clock.now += STALLED_AFTER_S + 3
    budget.check()
    assert [s.cut_for for s in stalled] == ["shed", None, None, None]
    assert budget.unsent == 3 * 2 * WRITE
    assert list(budget.writing) == stalled[1:]
    budget.admit()()  # what is held is at the cap: new streams are served


def test_only_stalled_writes_count_toward_the_unsent_bytes() -> None:
    clock = Clock()
    old = Stream(write_started=clock.now)
    budget = budget_with([old], clock, max_unsent_bytes=10 * WRITE, write_timeout_s=600)
    clock.now += STALLED_AFTER_S
    fresh = Stream(write_started=clock.now - 0.1)
    budget.writing[fresh] = None
    budget.check()
    assert budget.unsent == old.pending + old.held


def test_a_write_past_the_deadline_is_cut_whatever_the_bytes() -> None:
    clock = Clock()
    late, reading = Stream(write_started=clock.now), Stream(write_started=clock.now + 2.9)
    budget = budget_with([late, reading], clock, write_timeout_s=3)
    clock.now += 3
    budget.check()
    assert (late.cut_for, reading.cut_for) == ("stalled", None)
    assert list(budget.writing) == [reading]


@pytest.mark.parametrize(
    ("write_timeout_s", "stalled_after_s"),
    [(30.0, STALLED_AFTER_S), (3.0, 1.5), (0.0, STALLED_AFTER_S), (0.1, 0.05)],
)
def test_a_write_counts_as_stalled_after_five_seconds_or_half_the_deadline(
    write_timeout_s: float, stalled_after_s: float
) -> None:
    assert OutflowBudget(write_timeout_s=write_timeout_s).stalled_after_s == stalled_after_s


def test_beyond_the_stream_cap_new_streams_are_refused_until_one_is_released() -> None:
    budget = OutflowBudget(max_streams=2)
    first, _ = budget.admit(), budget.admit()
    with pytest.raises(Unavailable):
        budget.admit()
    first()
    first()  # releasing twice frees one slot, once
    budget.admit()
    with pytest.raises(Unavailable):
        budget.admit()
