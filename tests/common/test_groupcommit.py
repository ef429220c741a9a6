"""Group commit on a real nats-server: batches several writers append at once go in as one
atomic batch, each writer's part whole, guarded and numbered as if it had gone alone; a
group the stream refuses is committed writer by writer, so only the writer at fault fails."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import streams
from contracts.codec import encode
from contracts.events import GenerationRequested, PhaseCompleted
from services.common.eventlog import StoredEvent, read_generation
from services.common.eventwriter import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    EventBatch,
    GenerationWriter,
    WriterConflict,
    atomic_batches,
    cloudevents_headers,
)
from services.common.groupcommit import GroupCommits, Message, commit_groups
from tests.common.test_eventlog import (
    BATCH_LIMIT,
    _assert_whole_chain,
    _files,
    batch_limited_client,
)
from tests.support.nats_cluster import NatsCluster, connect_cluster


async def _context(client: Client, *, timeout: float = 5.0) -> JetStreamContext:
    """A JetStream context of `client` that knows the events stream takes atomic batches,
    as the orchestrator's does from its start: its writers' first batches go straight to a
    group, none waits for that answer first."""
    js = client.jetstream(timeout=timeout)
    assert await atomic_batches(js)
    return js


async def _writer(js: JetStreamContext) -> GenerationWriter:
    """A new generation's writer, after its `generation.requested`."""
    writer = GenerationWriter(js, str(uuid.uuid4()), str(uuid.uuid4()), source="test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    return writer


def _phase(writer: GenerationWriter, files: int, *, size: int = 10) -> EventBatch:
    """A phase's batch: `files` file.written events and the phase.completed."""
    batch = writer.batch()
    _files(batch, files, size=size)
    batch.add(PhaseCompleted, phase="model", files=[f"src/f{i}.py" for i in range(files)])
    return batch


def _groups(js: JetStreamContext) -> GroupCommits:
    return commit_groups(js, max_messages=MAX_BATCH_EVENTS, max_bytes=MAX_BATCH_BYTES)


async def _batch_ids(js: JetStreamContext, writers: list[GenerationWriter]) -> Counter[str]:
    """How many of the writers' stored messages each atomic batch id holds."""
    ids: Counter[str] = Counter()
    for writer in writers:
        for event in (await read_generation(js, writer.generation_id))[1:]:
            message = await js.get_msg(streams.EVENTS_STREAM, event.stream_seq)
            assert message.headers is not None
            ids[message.headers.get("Nats-Batch-Id", "")] += 1
    return ids


async def _assert_logs(
    js: JetStreamContext, writers: list[GenerationWriter], batches: list[EventBatch]
) -> None:
    """Each writer's log is its requested event and then exactly its batch's events."""
    for writer, batch in zip(writers, batches, strict=True):
        history = await read_generation(js, writer.generation_id)
        _assert_whole_chain(history)
        assert [e.event.event_id for e in history[1:]] == [e.event_id for e in batch.events]
        assert writer.last_stream_seq == history[-1].stream_seq


async def test_batches_appended_at_once_go_in_as_one_group_each_part_whole_and_guarded(
    nc: Client,
) -> None:
    js = await _context(nc)
    writers = [await _writer(js) for _ in range(6)]
    expected = [w.last_stream_seq for w in writers]
    batches = [_phase(w, 4 + i) for i, w in enumerate(writers)]
    acks = 0
    publish = js.publish

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal acks
        acks += 1
        return await publish(*args, **kwargs)

    js.publish = counting  # type: ignore[method-assign]
    stored: list[list[StoredEvent]] = await asyncio.gather(*(b.append() for b in batches))
    js.publish = publish  # type: ignore[method-assign]

    assert acks == 1, "six writers' batches, one commit"
    assert (_groups(js).groups, _groups(js).members) == (1, 6)
    await _assert_logs(js, writers, batches)
    ids = await _batch_ids(js, writers)
    assert len(ids) == 1 and "" not in ids
    for writer, batch, its, before in zip(writers, batches, stored, expected, strict=True):
        history = await read_generation(js, writer.generation_id)
        assert [(s.stream_seq, s.data) for s in its] == [
            (e.stream_seq, e.data) for e in history[1:]
        ]
        first = await js.get_msg(streams.EVENTS_STREAM, its[0].stream_seq)
        assert first.headers is not None
        assert first.headers["Nats-Expected-Last-Subject-Sequence"] == str(before)
        assert first.headers["Nats-Msg-Id"] == f"{writer.generation_id}:2"
        assert len(its) == len(batch)


async def test_a_stale_writer_in_a_group_fails_alone_and_the_others_go_in(nc: Client) -> None:
    js = await _context(nc)
    writers = [await _writer(js) for _ in range(4)]
    history = await read_generation(js, writers[0].generation_id)
    stale = GenerationWriter.after(js, history, source="test")
    # The first writer appends once more: the stale one's guard names an old last message.
    earlier = _phase(writers[0], 1)
    await earlier.append()
    batches = [_phase(w, 3) for w in writers]
    theirs = _phase(stale, 3, size=12)
    before = _groups(js).groups, _groups(js).members

    results = await asyncio.gather(
        *(b.append() for b in batches), theirs.append(), return_exceptions=True
    )

    assert isinstance(results[-1], WriterConflict)
    assert not any(isinstance(r, BaseException) for r in results[:-1])
    # One group of the five, refused; then each alone.
    assert (_groups(js).groups, _groups(js).members) == (before[0] + 1, before[1] + 5)
    for writer, batch in zip(writers[1:], batches[1:], strict=True):
        await _assert_logs(js, [writer], [batch])
    first = await read_generation(js, writers[0].generation_id)
    _assert_whole_chain(first)
    assert [e.event.event_id for e in first[1:]] == [
        e.event_id for e in [*earlier.events, *batches[0].events]
    ]


async def test_a_retried_batch_in_a_group_is_stored_once_and_the_others_go_in(
    nc: Client,
) -> None:
    js = await _context(nc)
    writers = [await _writer(js) for _ in range(3)]
    batches = [_phase(w, 3) for w in writers]
    # The first writer's batch reached the stream already (its ack was lost).
    history = await read_generation(js, writers[0].generation_id)
    twin = GenerationWriter.after(js, history, source="test")
    await twin.append_batch(batches[0].events)
    before = _groups(js).groups, _groups(js).members

    stored = await asyncio.gather(*(b.append() for b in batches))

    assert (_groups(js).groups, _groups(js).members) == (before[0] + 1, before[1] + 3)
    await _assert_logs(js, writers, batches)
    after = await read_generation(js, writers[0].generation_id)
    assert [s.stream_seq for s in stored[0]] == [e.stream_seq for e in after[1:]]


async def test_a_group_holds_no_more_messages_than_the_writers_limit(nc: Client) -> None:
    js = await _context(nc)
    writers = [
        GenerationWriter(
            js, str(uuid.uuid4()), str(uuid.uuid4()), source="test", max_batch_events=7
        )
        for _ in range(5)
    ]
    for writer in writers:
        await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    batches = [_phase(w, 2) for w in writers]  # three events each: two to a group

    await asyncio.gather(*(b.append() for b in batches))

    await _assert_logs(js, writers, batches)
    sizes = sorted((await _batch_ids(js, writers)).values())
    assert sizes == [3, 6, 6]


async def test_a_group_over_the_servers_lower_limit_goes_in_writer_by_writer_and_learns_it(
    tmp_path: Path,
) -> None:
    async with batch_limited_client(tmp_path) as client:
        js = await _context(client)
        writers = [await _writer(js) for _ in range(3)]
        batches = [_phase(w, 2) for w in writers]  # 3 events each, 9 in all: over 4

        await asyncio.gather(*(b.append() for b in batches))
        await _assert_logs(js, writers, batches)
        assert _groups(js).max_messages == BATCH_LIMIT

        more = [_phase(w, 1) for w in writers]  # 2 events each: two to a group of 4
        await asyncio.gather(*(b.append() for b in more))
        for writer, first, second in zip(writers, batches, more, strict=True):
            history = await read_generation(js, writer.generation_id)
            _assert_whole_chain(history)
            assert [e.event.event_id for e in history[1:]] == [
                e.event_id for e in [*first.events, *second.events]
            ]
        assert max((await _batch_ids(js, writers)).values()) <= BATCH_LIMIT


async def test_a_writer_cancelled_while_its_batch_waits_for_a_group_publishes_nothing(
    nc: Client,
) -> None:
    js = await _context(nc)
    first, cancelled = await _writer(js), await _writer(js)
    groups = GroupCommits(
        weakref.ref(js), max_messages=MAX_BATCH_EVENTS, max_bytes=MAX_BATCH_BYTES, in_flight=1
    )
    release = asyncio.Event()
    publish = js.publish

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await publish(*args, **kwargs)

    js.publish = held  # type: ignore[method-assign]
    ours = _phase(first, 2)
    theirs = _phase(cancelled, 2)

    def messages(writer: GenerationWriter, batch: EventBatch) -> list[Message]:
        out = [
            (encode(e), cloudevents_headers(e, "test", into={"Nats-Msg-Id": f"x:{e.seq}"}))
            for e in batch.events
        ]
        out[0][1]["Nats-Expected-Last-Subject-Sequence"] = str(writer.last_stream_seq)
        return out

    sending = asyncio.create_task(groups.commit(first.subject, messages(first, ours)))
    await asyncio.sleep(0.05)  # the first group is waiting for its ack
    waiting = asyncio.create_task(groups.commit(cancelled.subject, messages(cancelled, theirs)))
    await asyncio.sleep(0.05)
    waiting.cancel()
    release.set()
    await sending
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.2)
    js.publish = publish  # type: ignore[method-assign]
    assert groups.groups == 1
    assert len(await read_generation(js, cancelled.generation_id)) == 1, "nothing of it stored"
    assert len(await read_generation(js, first.generation_id)) == 1 + len(ours)


async def test_the_group_commits_of_a_context_do_not_keep_it_alive(nc: Client) -> None:
    js = await _context(nc)
    writer = await _writer(js)
    await _phase(writer, 2).append()
    assert _groups(js).groups == 1
    context = weakref.ref(js)
    del js, writer
    gc.collect()
    assert context() is None


async def test_on_a_3_node_cluster_a_group_is_atomic_and_a_stale_writer_fails_alone(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        client = await connect_cluster(cluster)
        js = await _context(client, timeout=10)
        assert (await js.stream_info(streams.EVENTS_STREAM)).config.num_replicas == 3
        writers = [await _writer(js) for _ in range(4)]
        batches = [_phase(w, 3) for w in writers]
        await asyncio.gather(*(b.append() for b in batches))
        await _assert_logs(js, writers, batches)
        assert len(await _batch_ids(js, writers)) == 1

        history = await read_generation(js, writers[0].generation_id)
        stale = GenerationWriter.after(js, history[:1], source="test")
        more = [_phase(w, 2) for w in writers]
        results = await asyncio.gather(
            *(b.append() for b in more), _phase(stale, 2, size=12).append(), return_exceptions=True
        )
        assert isinstance(results[-1], WriterConflict)
        assert not any(isinstance(r, BaseException) for r in results[:-1])
        for writer, first, second in zip(writers, batches, more, strict=True):
            log = await read_generation(js, writer.generation_id)
            _assert_whole_chain(log)
            assert [e.event.event_id for e in log[1:]] == [
                e.event_id for e in [*first.events, *second.events]
            ]
        await client.close()
    finally:
        cluster.stop()
