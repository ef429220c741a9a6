"""Reading a generation's log back: every event in order, whatever the log holds."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import subjects
from contracts.events import GenerationRequested, GenerationStarted, PhaseStarted
from contracts.phases import PHASES
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import (
    GenerationWriter,
    last_event,
    read_generation,
    subscribe_ordered,
)


async def _requested(nc: Client) -> GenerationWriter:
    writer = GenerationWriter(nc.jetstream(), str(uuid.uuid4()), str(uuid.uuid4()), source="test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    return writer


async def test_a_just_requested_generation_reads_as_its_one_event(nc: Client) -> None:
    writer = await _requested(nc)
    history = await read_generation(nc.jetstream(), writer.generation_id)
    assert [(e.stream_seq, type(e.event)) for e in history] == [
        (writer.last_stream_seq, GenerationRequested)
    ]
    assert (
        await read_generation(
            nc.jetstream(), writer.generation_id, after_stream_seq=writer.last_stream_seq
        )
        == []
    )


async def test_a_longer_log_reads_whole_and_in_order(nc: Client) -> None:
    writer = await _requested(nc)
    await writer.emit(GenerationStarted, plan=list(PHASES), worker="w", provider="offline")
    history = await read_generation(nc.jetstream(), writer.generation_id)
    assert [e.event.seq for e in history] == [1, 2]


async def test_a_stray_message_after_the_first_event_is_skipped_not_mistaken(
    nc: Client,
) -> None:
    writer = await _requested(nc)
    await nc.jetstream().publish(
        subjects.generation_events(writer.project_id, writer.generation_id), b"not an event"
    )
    history = await read_generation(nc.jetstream(), writer.generation_id)
    assert [type(e.event) for e in history] == [GenerationRequested]


async def test_a_generation_without_events_reads_empty(nc: Client) -> None:
    assert await read_generation(nc.jetstream(), str(uuid.uuid4())) == []


async def test_last_event_is_the_decoded_last_one_or_none(nc: Client) -> None:
    writer = await _requested(nc)
    await writer.emit(GenerationStarted, plan=list(PHASES), worker="w", provider="offline")
    last = await last_event(nc.jetstream(), writer.generation_id)
    assert last is not None
    assert (last.stream_seq, type(last.event)) == (writer.last_stream_seq, GenerationStarted)
    assert await last_event(nc.jetstream(), str(uuid.uuid4())) is None


async def test_an_ordered_reader_restarted_before_its_first_message_repeats_nothing(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    writer = await _requested(nc)
    for i in range(3):
        await writer.emit(PhaseStarted, phase=f"old{i}")
    subject = subjects.generation_events(writer.project_id, writer.generation_id)
    received: asyncio.Queue[int] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        received.put_nowait(int(msg.metadata.sequence.stream))

    after = writer.last_stream_seq
    sub = await subscribe_ordered(
        nc.jetstream(), subject, after_stream_seq=after, cb=on_message, idle_heartbeat_s=0.5
    )
    nats_server.kill()
    await asyncio.sleep(0.5)
    nats_server.start()
    await writer.emit(PhaseStarted, phase="new")
    first = await asyncio.wait_for(received.get(), timeout=60)
    assert first == writer.last_stream_seq > after
    await asyncio.sleep(2.0)
    assert received.empty(), "nothing older than the start was delivered after the restart"
    await sub.unsubscribe()
