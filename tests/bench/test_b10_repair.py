"""B10 (repair rounds): the figures it reads from a generation's events. No timing is
asserted (the figures come from `python -m bench --only B10`); the toy run is in
test_bench_smoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.scenarios.b10_repair import MODELS, Repaired, figures, row
from contracts.events import (
    LlmCalled,
    PhaseCompleted,
    RepairCompleted,
    RepairStarted,
    VerifyCompleted,
    VerifyStarted,
)

T0 = datetime(2026, 12, 2, tzinfo=UTC)


def _at(seconds: float, kind: type[Any], **fields: Any) -> Any:
    return kind(
        event_id="e", generation_id="g", project_id="p", seq=1,
        at=T0 + timedelta(seconds=seconds), **fields,
    )  # fmt: skip


def test_a_round_runs_from_its_start_to_the_verification_of_what_it_wrote() -> None:
    events = [
        _at(0.0, PhaseCompleted, phase="docs", files=[]),
        _at(1.0, VerifyStarted, round=0),
        _at(3.0, VerifyCompleted, round=0, verdict="failed", failed=1, duration_ms=1800),
        _at(3.1, RepairStarted, round=1),
        _at(3.2, LlmCalled, provider="gemini", model="m", phase="repair", latency_ms=50),
        _at(3.3, RepairCompleted, round=1, files_changed=["app/status.py"]),
        _at(3.4, VerifyStarted, round=1),
        _at(5.6, VerifyCompleted, round=1, verdict="passed", passed=2, duration_ms=2000),
    ]

    one = figures(events, total_s=6.0)

    assert (one.rounds, one.verdict) == (1, "passed")
    assert round(one.verify_s, 3) == 2.0
    assert [round(s, 3) for s in one.round_s] == [2.5]
    assert one.sandbox_s == [1.8, 2.0] and one.llm_s == [0.05]


def test_the_goal_is_the_scripted_rounds_and_verdict() -> None:
    fixed, never = MODELS
    good = Repaired(total_s=6.0, rounds=1, verdict="passed", verify_s=2.0, round_s=[2.5])
    off = [Repaired(total_s=4.0, verdict="failed", verify_s=2.0)]

    assert row("B10", fixed, [good], off).met is True
    assert row("B10", never, [good], off).met is False
    assert "1.25x" in row("B10", fixed, [good], off).ratio
