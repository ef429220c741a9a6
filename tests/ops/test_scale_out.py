"""Scaling out, each service its own process against one nats-server: two orchestrators and
two gateways (concurrent generations each complete exactly once, and a client watching
through either gateway sees every event), and two partitioned storage projectors (every
version stored whole)."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile

import pytest

from tests.ops.cluster import (
    Cluster,
    by_generation,
    check_log_is_whole,
    check_sse_matches_log,
    client,
    create,
    files_in_log,
    scrape,
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


async def test_two_partitioned_storage_projectors_store_every_version(cluster: Cluster) -> None:
    partitions = [
        cluster.storage(f"storage-{i}", KILN_STORAGE_PARTITIONS="2", KILN_STORAGE_PARTITION=str(i))
        for i in range(2)
    ]
    cluster.orchestrator()
    gateway = cluster.gateway()
    http = client(gateway.url)
    try:
        created = await asyncio.gather(*(create(http, project_name=f"shop-{i}") for i in range(12)))
        for accepted in created:
            await wait_status(http, accepted["generation_id"], "completed")
        # Iterations refer to their parent: a project's versions are all on one projector.
        iterated = await asyncio.gather(
            *(
                http.post(
                    "/generations/iterate",
                    json={
                        "parent_generation_id": a["generation_id"],
                        "modification_prompt": "add pagination",
                    },
                )
                for a in created[:6]
            )
        )
        assert all(r.status_code == 201 for r in iterated), [r.text for r in iterated]
        versions = created + [r.json() for r in iterated]
        statuses = [await wait_status(http, v["generation_id"], "completed") for v in versions]
        logs = by_generation(await stream_messages(cluster.nats_url))
        for accepted, status in zip(versions, statuses, strict=True):
            generation_id = accepted["generation_id"]
            messages = logs[generation_id]
            in_log = await files_in_log(cluster.nats_url, messages)
            expected = {path: content for path, (_, content) in in_log.items()}
            archive = await http.get(f"/generations/{generation_id}/archive")
            assert archive.status_code == 200, archive.text
            with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
                stored = {name: zipped.read(name).decode() for name in zipped.namelist()}
            assert stored == expected, generation_id
            assert status["file_count"] == len(expected)
            project = (await http.get(f"/projects/{accepted['project_id']}")).json()
            assert project["latest_version"] >= status["version"]
    finally:
        await http.aclose()

    applied = [
        (await scrape(service.url)).get("kiln_storage_events_applied_total", 0.0)
        for service in partitions
    ]
    events = sum(len(m) for m in by_generation(await stream_messages(cluster.nats_url)).values())
    assert sum(applied) == events
    assert all(a > 0 for a in applied), f"one partition applied nothing: {applied}"
