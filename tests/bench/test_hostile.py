"""`python -m bench.hostile` runs every attack end to end at a toy size and prints a row
for each. No timing and no memory figure is asserted (numbers come from the bench)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.hostile import ATTACKS, TOY, run, table
from bench.loadgen import hostile
from services.common.embedded_nats import EmbeddedNats
from tests.support.environment import ALICE_KEY
from tests.support.processes import lone_gateway
from tests.support.raw_http import address

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_every_attack_runs_at_a_toy_size_and_prints_its_row(tmp_path: Path) -> None:
    outcomes = await run(tmp_path, 1.0, TOY)

    assert [o.attack for o in outcomes] == [a.title(TOY) for a in ATTACKS]
    printed = table(outcomes)
    for outcome in outcomes:
        assert outcome.responses and "→" in outcome.rss
        assert "requests" in outcome.healthz and "requests" in outcome.healthz_new
        assert f"| {outcome.attack} |" in printed


async def test_slow_bodies_are_told_the_gateways_408_however_long_its_deadline(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(d) against a gateway whose body deadline is as long as the load generator's read
    timeout (2 s here, 30 s for both in the bench): every trickling client waits for the
    gateway's answer and reads its 408. With the read timeout applied to them, most gave
    up a moment before the gateway answered, counted "no status", reset the connection
    themselves and counted it open at the end."""
    monkeypatch.setattr(hostile, "READ_TIMEOUT_S", 2.0)
    with lone_gateway(tmp_path, nats_server.url, KILN_BODY_TIMEOUT="2") as (_, url):
        host, port = address(url)
        config = {
            "host": host,
            "port": port,
            "connections": 20,
            "interval": 0.5,
            "path": "/generations",
            "key": ALICE_KEY,
        }
        tally = hostile.Tally()
        # Long enough for every first connection's deadline, too short for the second's.
        still_open = await hostile.slow_body(config, tally, time.monotonic() + 3.0)

    result = tally.result(still_open)
    assert set(result["statuses"]) == {"408"}, result["statuses"]
    assert result["statuses"]["408"] >= 20
    assert len(result["closed_after"]) == result["statuses"]["408"]
    assert result["opened"] == result["statuses"]["408"] + still_open
