"""Reading a generation's log back: every event in order, whatever the log holds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, ServiceUnavailableError

from contracts import streams, subjects
from contracts.codec import content_sha256, encode, event_hash
from contracts.events import (
    FileWritten,
    GenerationRequested,
    GenerationStarted,
    PhaseCompleted,
    PhaseStarted,
    event_tag,
)
from contracts.phases import PHASES
from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import (
    StoredEvent,
    first_event,
    last_event,
    last_stream_seq,
    read_generation,
    stream_seq,
    subscribe_ordered,
)
from services.common.eventwriter import (
    EventBatch,
    GenerationWriter,
    WriterConflict,
    atomic_batches,
    cloudevents_headers,
)
from tests.support.nats_cluster import NatsCluster, connect_cluster
from tests.support.processes import ROOT
from tests.support.replica_behind import direct_get_finds, direct_gets_answered_by_a_replica_behind
from tests.support.waiting import eventually


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


async def test_first_event_is_the_generations_first_or_none(nc: Client) -> None:
    writer = await _requested(nc)
    await writer.emit(GenerationStarted, plan=list(PHASES), worker="w", provider="offline")
    first = await first_event(nc.jetstream(), writer.generation_id)
    assert first is not None and type(first.event) is GenerationRequested
    assert first.stream_seq == writer.last_stream_seq - 1
    assert await first_event(nc.jetstream(), str(uuid.uuid4())) is None


async def test_first_event_asks_the_streams_leader_when_a_replica_behind_finds_nothing(
    nc: Client,
) -> None:
    """A replica that has not caught up answers a direct get with "not found": the
    generation must not look absent (the gateway would write its first event again)."""
    js = nc.jetstream()
    await direct_gets_answered_by_a_replica_behind(js)
    writer = await _requested(nc)
    assert not await direct_get_finds(js, writer.generation_id), "the replica is not behind"

    first = await first_event(js, writer.generation_id)

    assert first is not None, "a replica behind made an existing generation look absent"
    assert (first.stream_seq, first.event.generation_id) == (
        writer.last_stream_seq,
        writer.generation_id,
    )
    assert await first_event(js, str(uuid.uuid4())) is None


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


# Atomic batches: a phase's events go in as one unit, or one at a time where the stream
# has no atomic batch publish.

BATCH_LIMIT = 4


class _BatchLimitedNats(EmbeddedNats):
    """A nats-server whose atomic batches hold at most BATCH_LIMIT messages."""

    def config_text(self) -> str:
        return (
            super()
            .config_text()
            .replace(
                "jetstream {",
                f"jetstream {{\n  limits {{ batch {{ max_msgs: {BATCH_LIMIT} }} }}",
                1,
            )
        )


def _files(batch: EventBatch, count: int, *, size: int = 10, phase: str = "model") -> None:
    for i in range(count):
        content = f"{i:0{size}d}"
        batch.add(
            FileWritten,
            path=f"src/f{i}.py",
            content=content,
            sha256=content_sha256(content),
            size=len(content),
            phase=phase,
            origin="generated",
        )


async def _stored(nc: Client, writer: GenerationWriter) -> list[RawStreamMsg]:
    js = nc.jetstream()
    history = await read_generation(js, writer.generation_id)
    return [await js.get_msg(streams.EVENTS_STREAM, e.stream_seq) for e in history]


def _assert_whole_chain(events: list[StoredEvent]) -> None:
    """Seqs 1..n exactly once, each event chained to the one before it."""
    assert [e.event.seq for e in events] == list(range(1, len(events) + 1))
    for before, after in itertools.pairwise(events):
        assert after.event.prev_hash == event_hash(before.data)


async def test_a_batch_goes_in_as_one_unit_with_one_ack(nc: Client) -> None:
    writer = await _requested(nc)
    batch = writer.batch()
    _files(batch, 5)
    batch.add(PhaseCompleted, phase="model", files=[f"src/f{i}.py" for i in range(5)])
    acks = 0
    publish = nc.jetstream().publish

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal acks
        acks += 1
        return await publish(*args, **kwargs)

    writer.js.publish = counting  # type: ignore[method-assign]
    stored = await batch.append()
    assert acks == 1
    history = await read_generation(nc.jetstream(), writer.generation_id)
    assert [(e.stream_seq, e.data) for e in history[1:]] == [(s.stream_seq, s.data) for s in stored]
    _assert_whole_chain(history)
    assert writer.last_stream_seq == history[-1].stream_seq
    messages = await _stored(nc, writer)
    batch_ids = {m.headers.get("Nats-Batch-Id") for m in messages[1:] if m.headers}
    assert len(batch_ids) == 1 and None not in batch_ids
    for message, event in zip(messages, history, strict=True):
        assert message.headers is not None
        assert message.headers["Nats-Msg-Id"] == f"{writer.generation_id}:{event.event.seq}"
        assert message.headers["ce-id"] == event.event.event_id
        assert message.headers["ce-type"] == f"kiln.{event_tag(type(event.event))}"


async def test_every_message_of_a_batch_carries_its_own_headers(nc: Client) -> None:
    writer = await _requested(nc)
    before = writer.last_stream_seq
    batch = writer.batch()
    batch.add(PhaseStarted, phase="model", title="Model")
    _files(batch, 3)
    batch.add(PhaseCompleted, phase="model", files=[f"src/f{i}.py" for i in range(3)])
    sent: list[dict[str, str]] = []
    publish = nc.publish

    async def recording(*args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        if headers is not None:  # each message of the batch, the commit's request too
            sent.append(dict(headers))
        return await publish(*args, headers=headers, **kwargs)

    nc.publish = recording  # type: ignore[method-assign]
    await batch.append()
    nc.publish = publish  # type: ignore[method-assign]

    history = await read_generation(nc.jetstream(), writer.generation_id)
    messages = await _stored(nc, writer)
    assert len(sent) == len(batch) == 5
    for number, (headers, message, event) in enumerate(
        zip(sent, messages[1:], history[1:], strict=True), start=1
    ):
        expected = cloudevents_headers(
            event.event, "test", into={"Nats-Msg-Id": f"{writer.generation_id}:{event.event.seq}"}
        )
        if number == 1:
            expected["Nats-Expected-Last-Subject-Sequence"] = str(before)
        expected["Nats-Batch-Id"] = sent[0]["Nats-Batch-Id"]
        expected["Nats-Batch-Sequence"] = str(number)
        if number == len(sent):
            expected["Nats-Batch-Commit"] = "1"
        assert list(headers.items()) == list(expected.items())
        assert message.headers is not None
        stored = {k: v for k, v in message.headers.items() if k.startswith("ce-")}
        assert stored == {
            k: v for k, v in cloudevents_headers(event.event, "test").items() if k.startswith("ce-")
        }
        assert message.headers["content-type"] == "application/json"
    _assert_whole_chain(history)


async def test_a_batch_of_one_event_goes_in_as_one_guarded_message(nc: Client) -> None:
    first = await _requested(nc)
    history = await read_generation(nc.jetstream(), first.generation_id)
    second = GenerationWriter.after(nc.jetstream(), history, source="test")
    ours = first.batch()
    ours.add(PhaseCompleted, phase="verify", files=[])
    await ours.append()
    messages = await _stored(nc, first)
    assert messages[-1].headers is not None
    assert "Nats-Batch-Id" not in messages[-1].headers, "no atomic batch staged for one event"
    assert messages[-1].headers["Nats-Msg-Id"] == f"{first.generation_id}:2"
    theirs = second.batch()
    theirs.add(PhaseCompleted, phase="verify", files=[])
    with pytest.raises(WriterConflict):
        await theirs.append()
    after = await read_generation(nc.jetstream(), first.generation_id)
    _assert_whole_chain(after)
    assert [e.event.event_id for e in after[1:]] == [e.event_id for e in ours.events]


async def test_a_second_writers_stale_batch_is_refused(nc: Client) -> None:
    first = await _requested(nc)
    history = await read_generation(nc.jetstream(), first.generation_id)
    second = GenerationWriter.after(nc.jetstream(), history, source="test")
    ours = first.batch()
    _files(ours, 3)
    await ours.append()
    theirs = second.batch()
    _files(theirs, 3, size=12)
    with pytest.raises(WriterConflict):
        await theirs.append()
    after = await read_generation(nc.jetstream(), first.generation_id)
    assert [e.event.event_id for e in after[1:]] == [e.event_id for e in ours.events]


async def test_a_retried_batch_whose_ack_was_lost_is_stored_once(nc: Client) -> None:
    writer = await _requested(nc)
    history = await read_generation(nc.jetstream(), writer.generation_id)
    # The same bytes reach the stream twice, as when a commit's ack is lost and the
    # writer sends the batch again: the twin's attempt is the one whose ack was lost.
    twin = GenerationWriter.after(nc.jetstream(), history, source="test")
    batch = writer.batch()
    _files(batch, 4)
    await twin.append_batch(batch.events)
    stored = await batch.append()
    after = await read_generation(nc.jetstream(), writer.generation_id)
    assert [e.event.event_id for e in after[1:]] == [e.event_id for e in batch.events]
    assert [s.stream_seq for s in stored] == [e.stream_seq for e in after[1:]]
    assert writer.last_seq == 5 and writer.last_stream_seq == after[-1].stream_seq


async def test_appends_jetstream_answers_503_to_while_electing_a_leader_are_retried(
    nc: Client,
) -> None:
    writer = await _requested(nc)
    # The broker's answer to an append during a cluster's leader election.
    js = writer.js
    publish = js.publish
    refusals: list[Exception] = []

    async def electing(*args: Any, **kwargs: Any) -> Any:
        if refusals:
            raise refusals.pop(0)
        return await publish(*args, **kwargs)

    def refused() -> list[Exception]:
        return [
            ServiceUnavailableError(
                code=503, err_code=10008, description="JetStream system temporarily unavailable"
            ),
            # The first attempt was taken after all, and is still being stored.
            APIError(code=409, err_code=10158, description="duplicate message id is in process"),
        ]

    js.publish = electing  # type: ignore[method-assign]
    refusals += refused()
    await writer.emit(PhaseStarted, phase="plan", progress=1)
    assert refusals == []
    refusals += refused()
    batch = writer.batch()
    _files(batch, 3)
    await batch.append()
    assert refusals == []

    history = await read_generation(nc.jetstream(), writer.generation_id)
    _assert_whole_chain(history)
    assert len(history) == 1 + 1 + 3, "each event once"


@contextlib.asynccontextmanager
async def batch_limited_client(tmp_path: Path) -> AsyncIterator[Client]:
    """A client of a nats-server of its own whose atomic batches hold at most BATCH_LIMIT
    messages, with Kiln's streams; both stopped after."""
    server = _BatchLimitedNats(tmp_path / "nats").start()
    try:
        client = await nats.connect(server.url)
        try:
            await ensure_streams(client.jetstream())
            yield client
        finally:
            await client.close()
    finally:
        server.stop()


async def test_a_phase_over_the_servers_batch_limit_goes_in_as_several_batches(
    tmp_path: Path,
) -> None:
    async with batch_limited_client(tmp_path) as client:
        writer = await _requested(client)
        batch = writer.batch()
        _files(batch, 3 * BATCH_LIMIT + 1)
        await batch.append()
        # Learnt from the server's refusal; the same limit is kept for the next batch.
        assert writer.max_batch_events == BATCH_LIMIT
        history = await read_generation(client.jetstream(), writer.generation_id)
        _assert_whole_chain(history)
        assert len(history) == 1 + 3 * BATCH_LIMIT + 1
        ids = [m.headers.get("Nats-Batch-Id") for m in await _stored(client, writer) if m.headers]
        assert [len(list(g)) for _, g in itertools.groupby(ids[1:])] == [4, 4, 4, 1]


async def test_a_batch_over_the_default_limits_is_split_by_count_and_by_bytes(
    nc: Client,
) -> None:
    writer = await _requested(nc)
    batch = writer.batch()
    _files(batch, 1001)
    await batch.append()
    big = GenerationWriter.after(
        nc.jetstream(),
        await read_generation(nc.jetstream(), writer.generation_id),
        source="test",
    )
    batch = big.batch()
    _files(batch, 4, size=700, phase="api")
    big.max_batch_bytes = 2 * len(encode(batch.events[0])) + 10  # two events a batch
    await batch.append()
    history = await read_generation(nc.jetstream(), writer.generation_id)
    _assert_whole_chain(history)
    ids = [m.headers.get("Nats-Batch-Id") for m in await _stored(nc, writer) if m.headers]
    assert [len(list(g)) for _, g in itertools.groupby(ids[1:])] == [1000, 1, 2, 2]


async def test_a_stream_without_atomic_batches_takes_a_batch_one_event_at_a_time(
    nats_server: EmbeddedNats,
) -> None:
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    await js.add_stream(streams.events_stream(atomic=False))
    assert await atomic_batches(js) is False  # detected (and logged) once per connection
    writer = await _requested(client)
    batch = writer.batch()
    _files(batch, 3)
    await batch.append()
    assert writer.atomic is False
    # A writer told the stream takes batches learns otherwise from its refusal.
    told = GenerationWriter.after(
        js, await read_generation(js, writer.generation_id), source="test", atomic=True
    )
    batch = told.batch()
    _files(batch, 2, size=12)
    await batch.append()
    assert told.atomic is False
    history = await read_generation(js, writer.generation_id)
    _assert_whole_chain(history)
    assert len(history) == 6
    messages = await _stored(client, writer)
    assert all(m.headers and "Nats-Batch-Id" not in m.headers for m in messages)
    await client.close()


CRASHING_WRITER = """
import asyncio, sys
import nats
from contracts.codec import content_sha256
from contracts.events import FileWritten
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter

async def main(url, generation_id, per_batch):
    nc = await nats.connect(servers=url.split(","))
    js = nc.jetstream(timeout=10)
    writer = GenerationWriter.after(js, await read_generation(js, generation_id), source="crash")
    while True:
        batch = writer.batch()
        for i in range(per_batch):
            content = "x" * 20_000 + str(writer.last_seq + i)
            batch.add(FileWritten, path=f"f{writer.last_seq + i}.py", content=content,
                      sha256=content_sha256(content), size=len(content), phase="model")
        await batch.append()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_writer_killed_between_or_inside_batches_leaves_whole_batches_only(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    await _kill_a_writer_between_or_inside_batches(nc, nats_server.url, tmp_path)


async def test_on_a_3_node_cluster_a_writer_killed_mid_batches_leaves_whole_batches_only(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        client = await connect_cluster(cluster)
        try:
            await _kill_a_writer_between_or_inside_batches(client, cluster.url, tmp_path)
        finally:
            await client.close()
    finally:
        cluster.stop()


async def _kill_a_writer_between_or_inside_batches(nc: Client, url: str, tmp_path: Path) -> None:
    """SIGKILL a writer process appending batches of 25 large events (so that some kills
    land while a batch is being sent), then check the log holds whole batches only and a
    new writer resumes after them."""
    per_batch = 25
    writer = await _requested(nc)
    script = tmp_path / "crashing_writer.py"
    script.write_text(CRASHING_WRITER)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        url,
        writer.generation_id,
        str(per_batch),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    js = nc.jetstream(timeout=10)

    async def three_batches_stored() -> bool:
        history = await read_generation(js, writer.generation_id)
        return len(history) >= 1 + 3 * per_batch

    try:
        await eventually(three_batches_stored, timeout=60)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()

    # A batch the killed writer had sent whole may still be committing on the server: the
    # log is read once it stops moving (a new writer that read too early is refused, as
    # the runner's WriterConflict path expects).
    async def settled() -> bool:
        before = await last_stream_seq(js, writer.generation_id)
        await asyncio.sleep(1.0)
        return before == await last_stream_seq(js, writer.generation_id)

    await eventually(settled, timeout=30)
    history = await read_generation(js, writer.generation_id)
    _assert_whole_chain(history)
    assert (len(history) - 1) % per_batch == 0, "no batch is half appended"
    resumed = GenerationWriter.after(js, history, source="test")
    batch = resumed.batch()
    _files(batch, per_batch)
    await batch.append()
    after = await read_generation(js, writer.generation_id)
    _assert_whole_chain(after)
    assert len(after) == len(history) + per_batch


async def test_on_a_3_node_cluster_batches_are_atomic_guarded_and_split(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "cluster", node=_BatchLimitedNats).start()
    try:
        client = await connect_cluster(cluster)
        js = client.jetstream(timeout=10)
        assert (await js.stream_info(streams.EVENTS_STREAM)).config.num_replicas == 3
        assert await atomic_batches(js)
        first = await _requested(client)
        history = await read_generation(js, first.generation_id)
        second = GenerationWriter.after(js, history, source="test")
        ours = first.batch()
        _files(ours, 2 * BATCH_LIMIT + 1)
        twin = GenerationWriter.after(js, history, source="test")
        await twin.append_batch(ours.events[:BATCH_LIMIT])  # a first attempt, its ack lost
        await ours.append()
        theirs = second.batch()
        _files(theirs, 2, size=12)
        with pytest.raises(WriterConflict):
            await theirs.append()
        after = await read_generation(js, first.generation_id)
        _assert_whole_chain(after)
        assert [e.event.event_id for e in after[1:]] == [e.event_id for e in ours.events]
        await client.close()
    finally:
        cluster.stop()


def test_the_stream_sequence_is_read_from_either_form_of_the_ack_subject() -> None:
    short = Msg(_client=None, subject="s", reply="$JS.ACK.S.C.1.42.7.1700000000000000000.0")  # type: ignore[arg-type]
    assert stream_seq(short) == 42
    # The form with a domain and an account hash: read through nats-py's metadata.
    long = Msg(
        _client=None,  # type: ignore[arg-type]
        subject="s",
        reply="$JS.ACK.dom.acc.S.C.1.43.7.1700000000000000000.0.tok",
    )
    assert stream_seq(long) == 43
