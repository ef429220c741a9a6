"""Reading a generation's log back: every event in order, whatever the log holds."""

from __future__ import annotations

import uuid

from nats.aio.client import Client

from contracts import subjects
from contracts.events import GenerationRequested, GenerationStarted
from contracts.phases import PHASES
from services.common.eventlog import GenerationWriter, read_generation


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
