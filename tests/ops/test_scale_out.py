"""Two orchestrators and two gateways, each its own process, against one nats-server:
concurrent generations each complete exactly once, and a client watching through either
gateway sees every event."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.ops.cluster import (
    Cluster,
    by_generation,
    check_log_is_whole,
    check_sse_matches_log,
    client,
    create,
    stream_messages,
    wait_status,
    watch,
)

GENERATIONS = 20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_twenty_generations_on_two_orchestrators_and_two_gateways(
    cluster: Cluster,
) -> None:
    cluster.storage()
    # A short pause per phase keeps generations running while their watchers join.
    first = cluster.orchestrator("orchestrator-1", KILN_OFFLINE_PHASE_DELAY="0.2")
    second = cluster.orchestrator("orchestrator-2", KILN_OFFLINE_PHASE_DELAY="0.2")
    gateways = [cluster.gateway("gateway-a"), cluster.gateway("gateway-b")]
    clients = [client(g.url) for g in gateways]
    try:
        # Each generation is created through one gateway and watched through both, from
        # the moment it is accepted: some watchers join mid-generation, some after it.
        created = await asyncio.gather(
            *(create(clients[i % 2], project_name=f"shop-{i}") for i in range(GENERATIONS))
        )
        watched = await asyncio.gather(
            *(
                watch(gateway.url, accepted["stream_url"])
                for accepted in created
                for gateway in gateways
            )
        )
        for accepted in created:
            status = await wait_status(clients[1], accepted["generation_id"])
            assert status["status"] == "completed", status
    finally:
        for http in clients:
            await http.aclose()

    logs = by_generation(await stream_messages(cluster.nats_url))
    assert set(logs) == {a["generation_id"] for a in created}
    workers: set[str] = set()
    for index, accepted in enumerate(created):
        generation_id = accepted["generation_id"]
        messages = logs[generation_id]
        check_log_is_whole(generation_id, messages)
        types = [m.event["type"] for m in messages]
        assert types.count("generation.started") == 1
        assert "generation.resumed" not in types
        workers |= {m.event["worker"] for m in messages if m.event["type"] == "generation.started"}
        for received in watched[2 * index : 2 * index + 2]:
            check_sse_matches_log(received, messages)
    pids = {int(worker.rsplit(":", 1)[1]) for worker in workers}
    assert pids == {first.pid, second.pid}, "both orchestrators took work from the queue"

    # Every log line about a generation names it as a field (KILN_LOG_FORMAT=json).
    ids = {a["generation_id"] for a in created}
    lines_about = 0
    for process in cluster.processes.started:
        for line in process.log.splitlines():
            record = json.loads(line)
            named = [i for i in ids if i in json.dumps(record)]
            if named:
                lines_about += 1
                assert record.get("generation_id") in named, (process.service, record)
    assert lines_about >= GENERATIONS * 4
