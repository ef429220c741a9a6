"""A replica that has not caught up never makes an existing generation look absent.

A direct get (the events stream's `allow_direct`) is answered by whichever replica the
request reaches; a node cut off from the others still answers, from what it had before the
cut. `first_event` (what the gateway asks before writing a generation for an
Idempotency-Key) must then ask the stream's leader, and, when the leader cannot be reached,
say "not now" rather than "no such generation" (issue 17: a retried create answered 500
after the partition test's heal, having met its own earlier event).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import nats
import pytest

from contracts import streams
from contracts.events import GenerationRequested
from services.common.broker import NOT_NOW, ensure_streams_when_ready
from services.common.eventlog import StoredEvent, first_event
from services.common.eventwriter import GenerationWriter
from tests.ops.nats_cluster import nats_cluster
from tests.support.replica_behind import direct_get_finds
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_replica_cut_off_from_the_leader_never_makes_a_generation_look_absent(
    tmp_path: Path,
) -> None:
    with nats_cluster(tmp_path / "nats", partitionable=True) as nodes:
        await nodes.wait_ready()
        everyone = await nats.connect(nodes.url.split(","))
        try:
            await ensure_streams_when_ready(everyone.jetstream(timeout=10), replicas=3)
        finally:
            await everyone.close()
        leader = await eventually(
            lambda: nodes.leader(streams.EVENTS_STREAM), 60, 0.1, what="a KILN_EVENTS leader"
        )
        behind = next(n for n in nodes.nodes if n.server_name != leader)
        await eventually(
            lambda: nodes.serves_direct_gets(behind, streams.EVENTS_STREAM),
            60,
            0.2,
            what=f"{behind.server_name}'s replica to answer direct gets",
        )
        majority = await nats.connect([n.url for n in nodes.nodes if n is not behind])
        inside = await nats.connect(behind.url)
        try:
            nodes.cut(behind)
            writer = GenerationWriter(
                majority.jetstream(timeout=5),
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                source="test",
                retry_for_s=60,
            )
            await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
            js = inside.jetstream(timeout=2)
            assert not await direct_get_finds(js, writer.generation_id), "it is not behind"

            # The leader cannot be asked through the cut-off node: not known, not absent.
            with pytest.raises(NOT_NOW):
                await first_event(js, writer.generation_id)

            nodes.heal(behind)

            async def found() -> StoredEvent | None:
                with contextlib.suppress(*NOT_NOW):
                    return await first_event(js, writer.generation_id)
                return None

            first = await eventually(found, 90, 0.2, what="the event after the heal")
            assert (first.stream_seq, first.event.generation_id) == (
                writer.last_stream_seq,
                writer.generation_id,
            )
        finally:
            await inside.close()
            await majority.close()
