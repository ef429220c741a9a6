"""Every benchmark scenario runs end to end at a toy size: the bench code works. No timing
is asserted (numbers come from `python -m bench`, never from tests)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bench.report import table
from bench.run import SCENARIOS
from bench.scenarios import Context


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario_runs_at_a_toy_size(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(SCENARIOS[name])
    rows = await module.run(Context(root=tmp_path, runs=1, toy=True))

    assert rows, "a scenario reports at least one row"
    for row in rows:
        assert row.scenario.startswith(name)
        assert row.met is not None, row.notes
        assert "—" not in (row.kiln, row.baseline), row
    assert name in table(rows)
