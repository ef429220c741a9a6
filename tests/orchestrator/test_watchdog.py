"""The watchdog: a generation whose orchestrator went silent, or whose command the work
queue gave up on, is marked failed with a reason, exactly once; live ones are left alone."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from contracts import streams, subjects
from contracts.codec import encode
from contracts.commands import GenerateRequested
from contracts.events import GenerationCompleted, GenerationRequested, GenerationStarted, utc_now
from contracts.phases import PHASES
from contracts.schema import Entity, Field, ProjectSchema
from contracts.state import fold
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.orchestrator.watchdog import Heartbeat, Heartbeats, Watchdog

SCHEMA = ProjectSchema(entities=[Entity(name="Thing", fields=[Field(name="name", type="string")])])


@pytest.fixture
async def runs(nc: Client) -> KeyValue:
    return await nc.jetstream().key_value(streams.RUNS_BUCKET)


async def started_generation(nc: Client) -> GenerationWriter:
    js = nc.jetstream()
    writer = GenerationWriter(js, str(uuid.uuid4()), str(uuid.uuid4()), source="test")
    await writer.emit(
        GenerationRequested, owner="alice", project_name="p", version=1, schema=SCHEMA
    )
    await writer.emit(GenerationStarted, plan=list(PHASES), worker="dead:1", provider="offline")
    return writer


async def status_of(nc: Client, generation_id: str) -> str:
    state = fold(e.event for e in await read_generation(nc.jetstream(), generation_id))
    assert state is not None
    return state.summary.status


async def test_a_silent_generation_is_failed_once_with_a_reason(nc: Client, runs: KeyValue) -> None:
    writer = await started_generation(nc)
    gid = writer.generation_id
    await runs.put(gid, msgspec.json.encode(Heartbeat("dead:1", time.time() - 600)))
    watchdogs = [
        Watchdog(nc, nc.jetstream(), runs, worker=f"w{i}", stale_after_s=60) for i in range(3)
    ]

    results = await asyncio.gather(*(w.sweep() for w in watchdogs))

    assert sorted(len(r) for r in results) == [0, 0, 1], "exactly one watchdog wrote it"
    events = await read_generation(nc.jetstream(), gid)
    failed = events[-1].event
    assert type(failed).__name__ == "GenerationFailed"
    assert failed.error_kind == "abandoned"  # type: ignore[attr-defined]
    assert "dead:1" in failed.message  # type: ignore[attr-defined]
    assert "files written so far are kept" in failed.message  # type: ignore[attr-defined]
    assert await watchdogs[0].sweep() == []
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await runs.get(gid)


async def test_a_generation_with_a_fresh_heartbeat_is_left_running(
    nc: Client, runs: KeyValue
) -> None:
    writer = await started_generation(nc)
    await Heartbeats(runs, "alive:1").beat(writer.generation_id)

    assert await Watchdog(nc, nc.jetstream(), runs, worker="w", stale_after_s=60).sweep() == []
    assert await status_of(nc, writer.generation_id) == "running"


async def test_a_finished_generation_only_loses_its_stale_heartbeat(
    nc: Client, runs: KeyValue
) -> None:
    writer = await started_generation(nc)
    await writer.emit(GenerationCompleted, file_count=0, total_bytes=0, duration_ms=1)
    await runs.put(writer.generation_id, msgspec.json.encode(Heartbeat("x", 0)))

    assert await Watchdog(nc, nc.jetstream(), runs, worker="w", stale_after_s=60).sweep() == []
    assert await status_of(nc, writer.generation_id) == "completed"
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await runs.get(writer.generation_id)


async def test_a_command_out_of_deliveries_fails_its_generation(nc: Client, runs: KeyValue) -> None:
    js = nc.jetstream()
    writer = await started_generation(nc)
    command = GenerateRequested(
        generation_id=writer.generation_id, project_id=writer.project_id, at=utc_now()
    )
    await js.publish(subjects.GENERATE_COMMANDS, encode(command))
    stop = asyncio.Event()
    watchdog = Watchdog(nc, js, runs, worker="w", stale_after_s=600)
    task = asyncio.create_task(watchdog.run(stop))
    # An orchestrator takes the command and dies without settling it, on its only delivery.
    sub = await js.pull_subscribe(
        subjects.GENERATE_COMMANDS,
        durable=streams.ORCHESTRATOR_CONSUMER,
        stream=streams.COMMANDS_STREAM,
        config=streams.orchestrator_consumer(ack_wait_s=0.5, max_deliver=1),
    )
    assert len(await sub.fetch(1, timeout=2)) == 1
    try:
        for _ in range(100):
            if await status_of(nc, writer.generation_id) == "failed":
                break
            with pytest.raises(nats.errors.TimeoutError):
                await sub.fetch(1, timeout=0.1)
        events = await read_generation(js, writer.generation_id)
        assert type(events[-1].event).__name__ == "GenerationFailed"
        assert "gave up on this generation after 1 attempts" in events[-1].event.message  # type: ignore[attr-defined]
    finally:
        stop.set()
        await task
