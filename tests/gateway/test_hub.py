"""A generation's shared log wakes each of its watchers through a future of its own; the hub
reads a generation only while someone watches it, with one consumer from its first event
to its last, so a watcher joining at any moment gets every event once, in order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from contracts import streams
from contracts.events import GenerationCompleted, GenerationRequested, PhaseProgress
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.gateway.hub import IDLE_LOG_TTL_S, GenerationLog, Hub, sse_chunk
from tests.support.waiting import eventually


def _block(seq: int) -> tuple[str, bytes]:
    block = sse_chunk(seq, b'{"type": "phase.progress", "seq": %d}' % seq)
    assert block is not None
    return block


async def test_every_waiting_watcher_wakes_when_the_log_grows() -> None:
    log = GenerationLog("g1")
    log.replay_done()
    waiters = [log.next_change() for _ in range(3)]
    assert not any(w.done() for w in waiters)
    log.offer_live(5, *_block(5))
    assert all(w.done() for w in waiters)
    assert log.seqs == [5]


async def test_a_watcher_cancelling_its_wait_leaves_the_others_waiting() -> None:
    log = GenerationLog("g1")
    gone, staying = log.next_change(), log.next_change()
    gone.cancel()
    log.replay_done()
    assert staying.done() and staying.result() is None


async def test_a_wait_started_after_a_change_waits_for_the_next_one() -> None:
    log = GenerationLog("g1")
    log.replay_done()
    later = log.next_change()
    await asyncio.sleep(0)
    assert not later.done()
    log.replay_failed(RuntimeError("gateway stopping"))
    assert later.done()


def _writer(nc: Client) -> GenerationWriter:
    return GenerationWriter(nc.jetstream(), str(uuid.uuid4()), str(uuid.uuid4()), source="test")


async def _append(writer: GenerationWriter, events: int, past_a_third: asyncio.Event) -> None:
    """`events` events appended one by one (each awaiting its ack), the last terminal."""
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    for i in range(events - 2):
        await writer.emit(PhaseProgress, phase="models", message=f"step {i}")
        if i == events // 3:
            past_a_third.set()
    await writer.emit(GenerationCompleted, file_count=0, total_bytes=0, duration_ms=1, progress=100)


async def _stream_seqs(nc: Client, generation_id: str) -> list[int]:
    return [e.stream_seq for e in await read_generation(nc.jetstream(), generation_id)]


async def _consumers(nc: Client) -> int:
    info = await nc.jetstream().stream_info(streams.EVENTS_STREAM)
    return int(info.state.consumer_count)


@pytest.fixture
async def hub(nc: Client) -> AsyncIterator[Hub]:
    """A started hub on the test's nats-server, stopped after the test."""
    started = Hub(nc, nc.jetstream())
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def _whole(nc: Client, generation_log: GenerationLog) -> None:
    """Wait for the log to reach its terminal event; it holds every event, once, in order."""
    await eventually(
        lambda: generation_log.complete, 10, 0.01, what="the log to reach the terminal event"
    )
    assert generation_log.seqs == await _stream_seqs(nc, generation_log.generation_id)


async def test_a_watcher_joining_a_running_generation_gets_every_event_once_in_order(
    nc: Client, hub: Hub
) -> None:
    watched, unwatched = _writer(nc), _writer(nc)
    past_a_third = asyncio.Event()
    appending = asyncio.gather(
        _append(watched, 300, past_a_third), _append(unwatched, 300, asyncio.Event())
    )
    await past_a_third.wait()
    generation_log = hub.attach(watched.generation_id)
    await appending

    await _whole(nc, generation_log)
    assert len(generation_log.chunks) == 300
    assert generation_log.replayed and hub.replays_started == 1
    assert list(hub.logs) == [watched.generation_id], "nobody watches the other"


async def test_a_generation_nobody_watches_any_longer_has_its_consumer_dropped(
    nc: Client, hub: Hub
) -> None:
    writer = _writer(nc)
    await _append(writer, 10, asyncio.Event())
    before = await _consumers(nc)
    generation_log = hub.attach(writer.generation_id)

    async def followed() -> bool:
        return generation_log.complete and await _consumers(nc) == before + 1

    await eventually(followed, 10, 0.01, what="one consumer reading the generation")
    hub.detach(generation_log)
    hub.sweep(time.monotonic() + IDLE_LOG_TTL_S / 2)
    assert writer.generation_id in hub.logs, "kept a while for a reconnecting watcher"
    hub.sweep(time.monotonic() + IDLE_LOG_TTL_S + 1)
    assert writer.generation_id not in hub.logs

    async def dropped() -> bool:
        return await _consumers(nc) == before

    await eventually(dropped, 10, 0.05, what="the generation's consumer to go")


async def test_a_generation_watched_before_its_first_event_gets_every_event_as_it_comes(
    nc: Client, hub: Hub
) -> None:
    writer = _writer(nc)
    generation_log = hub.attach(writer.generation_id)
    await eventually(lambda: generation_log.replayed, 10, 0.01, what="an empty replay")
    assert generation_log.seqs == []
    await _append(writer, 7, asyncio.Event())
    await _whole(nc, generation_log)
    assert len(generation_log.seqs) == 7 and generation_log.failed is None
