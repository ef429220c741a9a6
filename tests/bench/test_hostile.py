"""`python -m bench.hostile` runs every attack end to end at a toy size and prints a row
for each. No timing and no memory figure is asserted (numbers come from the bench)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.hostile import ATTACKS, TOY, run, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_every_attack_runs_at_a_toy_size_and_prints_its_row(tmp_path: Path) -> None:
    outcomes = await run(tmp_path, 1.0, TOY)

    assert [o.attack for o in outcomes] == [a.title(TOY) for a in ATTACKS]
    printed = table(outcomes)
    for outcome in outcomes:
        assert outcome.responses and "→" in outcome.rss
        assert "requests" in outcome.healthz and "requests" in outcome.healthz_new
        assert f"| {outcome.attack} |" in printed
