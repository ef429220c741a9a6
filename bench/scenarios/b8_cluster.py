"""B8: B6 on a 3-node nats-server cluster, every stream at 3 replicas; the raw baseline
publishes to a stream of the same configuration on the same cluster."""

from __future__ import annotations

from bench.report import Row
from bench.scenarios import Context
from bench.scenarios.b6_end_to_end import run_on

TITLE = "B8 end to end, 3-node cluster"
NODES = 3


async def run(ctx: Context) -> list[Row]:
    return await run_on(ctx, TITLE, cluster=NODES)
