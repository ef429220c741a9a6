"""`python -m bench.b6_rounds` runs its rounds end to end at a toy size and reports every
figure of each. No timing is asserted (numbers come from running it, never from tests)."""

from __future__ import annotations

from pathlib import Path

from bench.b6_rounds import PROCESSES, measure


async def test_each_round_reports_its_times_and_every_process_cpu(tmp_path: Path) -> None:
    # 20 entities: CPU time is counted in clock ticks (10 ms), and two 1-entity generations
    # can cost the orchestrator and storage less than one tick each.
    rounds = await measure(tmp_path, rounds=2, entities=20, concurrent=2)

    assert len(rounds) == 2
    for figures in rounds:
        assert set(figures) == {"wall", "last event", "raw", *PROCESSES}
        assert figures["wall"] > 0 and figures["raw"] > 0
        assert 0 < figures["last event"] <= figures["wall"] + 1
        assert all(figures[name] >= 0 for name in PROCESSES)
    assert sum(figures["orchestrator"] + figures["storage"] for figures in rounds) > 0
