"""The subscriber SDK against a real nats-server: typed events, in order, from where asked,
across a broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client as NATS

from contracts.events import (
    GenerationCompleted,
    GenerationRequested,
    PhaseCompleted,
    PhaseStarted,
)
from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.eventwriter import GenerationWriter
from services.sdk import Received, subscribe


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_streams(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


def writer(nc: NATS, project_id: str | None = None) -> GenerationWriter:
    return GenerationWriter(
        nc.jetstream(), project_id or str(uuid.uuid4()), str(uuid.uuid4()), source="kiln/test"
    )


async def write_generation(w: GenerationWriter, phases: int = 2) -> None:
    await w.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    for i in range(phases):
        await w.emit(PhaseStarted, phase=f"p{i}")
        await w.emit(PhaseCompleted, phase=f"p{i}", summary=f"phase {i}")
    await w.emit(GenerationCompleted, file_count=0, total_bytes=0, duration_ms=1)


async def take(
    iterator: AsyncIterator[Received], count: int, timeout: float = 20
) -> list[Received]:
    received: list[Received] = []
    async with asyncio.timeout(timeout):
        async for item in iterator:
            received.append(item)
            if len(received) == count:
                break
    return received


async def nothing_more(iterator: AsyncIterator[Received], wait: float = 1.5) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            extra = await anext(aiter(iterator))
            pytest.fail(f"an unexpected event: {extra}")


async def test_one_generation_from_the_start_in_order_and_typed(nc: NATS) -> None:
    w = writer(nc)
    await write_generation(w)
    other = writer(nc)
    await write_generation(other)

    received = await take(subscribe(nc, generation_id=w.generation_id), 6)

    assert [r.event.seq for r in received] == [1, 2, 3, 4, 5, 6]
    assert [r.stream_seq for r in received] == sorted(r.stream_seq for r in received)
    assert {r.event.generation_id for r in received} == {w.generation_id}
    assert isinstance(received[0].event, GenerationRequested)
    assert isinstance(received[-1].event, GenerationCompleted)
    assert received[-1].type == "generation.completed"
    assert received[2].event.prev_hash  # the bytes are the stored ones, chain and all


async def test_since_a_stream_seq_gives_only_the_later_events(nc: NATS) -> None:
    w = writer(nc)
    await write_generation(w)
    everything = await take(subscribe(nc, generation_id=w.generation_id), 6)

    subscription = subscribe(nc, generation_id=w.generation_id, since=everything[2].stream_seq)
    later = await take(subscription, 3)

    assert [r.event.seq for r in later] == [4, 5, 6]
    await nothing_more(subscription)


async def test_since_a_time_gives_the_events_stored_from_then_on(nc: NATS) -> None:
    w = writer(nc)
    await w.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    await asyncio.sleep(0.2)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await w.emit(PhaseStarted, phase="plan")
    await w.emit(PhaseCompleted, phase="plan")

    received = await take(subscribe(nc, generation_id=w.generation_id, since=cut), 2)

    assert [r.event.seq for r in received] == [2, 3]
    assert all(r.stored_at >= cut for r in received)


async def test_following_everything_starts_with_new_events_and_filters_types(nc: NATS) -> None:
    await write_generation(writer(nc))  # history a follower does not want
    subscription = subscribe(nc, types=["generation.completed", PhaseStarted])
    first = asyncio.create_task(take(subscription, 3))
    await asyncio.sleep(0.5)  # the consumer exists before the new events

    w = writer(nc)
    await write_generation(w)
    received = await first

    assert [(r.type, r.event.generation_id) for r in received] == [
        ("phase.started", w.generation_id),
        ("phase.started", w.generation_id),
        ("generation.completed", w.generation_id),
    ]


async def test_one_project_only(nc: NATS) -> None:
    project = str(uuid.uuid4())
    mine, theirs = writer(nc, project), writer(nc)
    await write_generation(theirs)
    await write_generation(mine, phases=1)
    await write_generation(writer(nc, project), phases=1)

    received = await take(subscribe(nc, project_id=project, since=0), 8)

    assert {r.event.project_id for r in received} == {project}
    assert [r.event.seq for r in received] == [1, 2, 3, 4, 1, 2, 3, 4]


async def test_a_broker_restart_loses_and_repeats_nothing(
    nats_server: EmbeddedNats, nc: NATS
) -> None:
    w = writer(nc)
    await w.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    subscription = subscribe(nc, generation_id=w.generation_id)
    received = await take(subscription, 1)

    nats_server.kill()
    await asyncio.sleep(0.5)
    nats_server.start()
    for i in range(3):
        await w.emit(PhaseStarted, phase=f"p{i}")
    received += await take(subscription, 3, timeout=60)

    assert [r.event.seq for r in received] == [1, 2, 3, 4]
    await nothing_more(subscription, wait=3.0)
