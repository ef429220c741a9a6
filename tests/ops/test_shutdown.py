"""SIGTERM to a service: it stops taking work, hands back or finishes what it holds, and
exits promptly with code 0, while another replica carries on."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.ops.cluster import (
    Cluster,
    SSEEvent,
    by_generation,
    check_log_is_whole,
    check_sse_matches_log,
    client,
    create,
    files_in_log,
    scrape,
    stream_messages,
    wait_exit,
    wait_status,
    watch,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPT_EXIT_S = 10.0


async def test_sigterm_to_a_gateway_mid_stream_the_client_resumes_on_another(
    cluster: Cluster,
) -> None:
    cluster.storage()
    cluster.orchestrator(KILN_OFFLINE_PHASE_DELAY="0.7")
    first = cluster.gateway("gateway-a")
    second = cluster.gateway("gateway-b")
    async with client(first.url) as alice:
        accepted = await create(alice)
    received: list[SSEEvent] = []
    watcher = asyncio.create_task(watch(first.url, accepted["stream_url"], received=received))
    await eventually(lambda: any(e.type == "phase.completed" for e in received), 120)

    first.process.signal(signal.SIGTERM)
    before = await asyncio.wait_for(watcher, 60)
    code, seconds = await asyncio.to_thread(wait_exit, first, 30)
    assert code == 0 and seconds < PROMPT_EXIT_S, (code, seconds, first.process.log[-2000:])
    assert before, "the first gateway sent some events"
    assert before[-1].type != "generation.completed", "the stream ended before the generation"

    # The browser's EventSource reconnects with the last id it saw, to another replica.
    after = await watch(second.url, accepted["stream_url"], last_event_id=before[-1].id)
    assert after and after[-1].type == "generation.completed"

    messages = by_generation(await stream_messages(cluster.nats_url))[accepted["generation_id"]]
    check_log_is_whole(accepted["generation_id"], messages)
    check_sse_matches_log(before + after, messages)
    assert "SSE stream closed" in first.process.log and "the gateway is stopping" in (
        first.process.log
    )


async def test_sigterm_to_an_orchestrator_hands_its_generation_to_another(
    cluster: Cluster,
) -> None:
    cluster.storage()
    delay = {"KILN_OFFLINE_PHASE_DELAY": "0.7", "KILN_SHUTDOWN_GRACE": "0"}
    orchestrators = [cluster.orchestrator("orchestrator-1", **delay)]
    gateway = cluster.gateway()
    async with client(gateway.url) as alice:
        accepted = await create(alice)
        received: list[SSEEvent] = []
        watcher = asyncio.create_task(watch(gateway.url, accepted["stream_url"], received=received))
        await eventually(lambda: any(e.type == "phase.completed" for e in received), 120)
        # A second orchestrator joins; then the one running the generation is stopped.
        orchestrators.append(cluster.orchestrator("orchestrator-2", **delay))
        stopped = orchestrators[0]
        stopped.process.signal(signal.SIGTERM)
        code, seconds = await asyncio.to_thread(wait_exit, stopped, 30)
        assert code == 0 and seconds < PROMPT_EXIT_S, (code, seconds, stopped.process.log[-2000:])
        assert "interrupted by a shutdown" in stopped.process.log

        status = await wait_status(alice, accepted["generation_id"], timeout=180)
        assert status["status"] == "completed", status
        await asyncio.wait_for(watcher, 60)

    messages = by_generation(await stream_messages(cluster.nats_url))[accepted["generation_id"]]
    check_log_is_whole(accepted["generation_id"], messages)
    check_sse_matches_log(received, messages)
    events = [m.event for m in messages]
    started = [e for e in events if e["type"] == "generation.started"]
    resumed = [e for e in events if e["type"] == "generation.resumed"]
    assert [e["worker"].rsplit(":", 1)[1] for e in started] == [str(orchestrators[0].pid)]
    assert [e["worker"].rsplit(":", 1)[1] for e in resumed] == [str(orchestrators[1].pid)]
    completed_phases = [e["phase"] for e in events if e["type"] == "phase.completed"]
    assert len(completed_phases) == len(set(completed_phases)), "no finished phase was redone"


async def test_sigterm_to_an_orchestrator_within_its_grace_finishes_the_generation(
    cluster: Cluster,
) -> None:
    cluster.storage()
    orchestrator = cluster.orchestrator(KILN_OFFLINE_PHASE_DELAY="0.3", KILN_SHUTDOWN_GRACE="60")
    gateway = cluster.gateway()
    async with client(gateway.url) as alice:
        accepted = await create(alice)
        received: list[SSEEvent] = []
        watcher = asyncio.create_task(watch(gateway.url, accepted["stream_url"], received=received))
        await eventually(lambda: any(e.type == "phase.completed" for e in received), 120)
        orchestrator.process.signal(signal.SIGTERM)
        code, _ = await asyncio.to_thread(wait_exit, orchestrator, 60)
        assert code == 0, orchestrator.process.log[-2000:]
        await asyncio.wait_for(watcher, 60)
    messages = by_generation(await stream_messages(cluster.nats_url))[accepted["generation_id"]]
    check_log_is_whole(accepted["generation_id"], messages)
    assert "generation.resumed" not in [m.event["type"] for m in messages]
    check_sse_matches_log(received, messages)


async def test_sigterm_to_storage_exits_promptly_and_a_new_one_catches_up(
    cluster: Cluster,
) -> None:
    storage = cluster.storage()
    cluster.orchestrator(KILN_OFFLINE_PHASE_DELAY="0.5")
    gateway = cluster.gateway()
    async with client(gateway.url) as alice:
        accepted = await create(alice)
        await wait_status(alice, accepted["generation_id"], "running")
        storage.process.signal(signal.SIGTERM)
        code, seconds = await asyncio.to_thread(wait_exit, storage, 30)
        assert code == 0 and seconds < PROMPT_EXIT_S, (code, seconds, storage.process.log[-2000:])

        await wait_status(alice, accepted["generation_id"], "completed", timeout=180)
        replacement = cluster.storage("storage-2")

        # The new projector takes over where the old one stopped: the read model ends up
        # holding the whole version.
        async def projected() -> httpx.Response | None:
            files = await alice.get(f"/generations/{accepted['generation_id']}/files")
            assert files.status_code in (200, 503), files.text
            return files if files.status_code == 200 else None

        files = await eventually(projected, 120, 0.2, what="the new projector's version")
    messages = by_generation(await stream_messages(cluster.nats_url))[accepted["generation_id"]]
    check_log_is_whole(accepted["generation_id"], messages)
    written = await files_in_log(cluster.nats_url, messages)
    assert {f["path"] for f in files.json()["files"]} == set(written)
    metrics = await scrape(replacement.url)
    assert metrics["kiln_storage_applied_stream_seq"] >= messages[-1].stream_seq
