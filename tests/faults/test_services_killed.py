"""Kill a service with SIGKILL at the worst moment: the generation finishes, and nothing is
lost or duplicated — each end state is compared with a run that had no fault."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import streams
from contracts.events import FileWritten, GenerationResumed, VersionBasedOn, event_tag
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import StoredEvent
from services.storage.models import Base
from tests.faults.conftest import (
    assert_a_whole_log,
    create,
    files_of,
    follow,
    history,
    wait_status,
)
from tests.support import client as kiln
from tests.support.client import SSEEvent
from tests.support.processes import Processes
from tests.support.waiting import eventually

VOLATILE_COLUMNS = {"updated_at"}
ITERATION_PROMPT = "add pagination"
# Where the orchestrator is killed: the first event of the generation's stream that matches.
KILL_POINTS: dict[str, Callable[[SSEEvent], bool]] = {
    # Mid-way through a phase that writes files.
    "mid-schemas": lambda e: e.type == "file.written" and e.data["phase"] == "schemas",
    # An iteration's plan phase, its manifest just appended, the provider at work.
    "after-manifest": lambda e: e.type == "version.based_on",
    # A later phase of an iteration.
    "schemas-started": lambda e: e.type == "phase.started" and e.data["phase"] == "schemas",
}


@pytest.mark.parametrize(
    ("kind", "kill_point"),
    [("create", "mid-schemas"), ("iterate", "after-manifest"), ("iterate", "schemas-started")],
)
async def test_an_orchestrator_killed_mid_phase_is_resumed_and_ends_like_a_clean_run(
    processes: Processes, nats_server: EmbeddedNats, client_for: Any, kind: str, kill_point: str
) -> None:
    processes.start("storage")
    first = processes.start("orchestrator", "orchestrator-1")
    _, url = processes.gateway()
    client = client_for(url)
    start: Callable[[], Awaitable[dict[str, Any]]] = functools.partial(create, client)
    if kind == "iterate":
        # An iteration, killed once its version.based_on is in the log: the contents it
        # inherits are nowhere but in KILN_BLOBS for the orchestrator that resumes it.
        parent = await create(client)
        await wait_status(client, parent["generation_id"], "completed")
        start = functools.partial(kiln.iterate, client, parent["generation_id"], ITERATION_PROMPT)
    killed_in = KILL_POINTS[kill_point]
    clean = await start()
    await wait_status(client, clean["generation_id"], "completed")

    victim = await start()
    gid = victim["generation_id"]
    seen = await follow(url, gid, until=killed_in)
    first.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    processes.start("orchestrator", "orchestrator-2")
    rest = await follow(url, gid, last_event_id=seen[-1].id)
    recovered_s = time.monotonic() - killed_at
    await wait_status(client, gid, "completed")

    events = await history(nats_server.url, gid)
    assert_a_whole_log(events)
    tags = [event_tag(type(e.event)) for e in events]
    assert tags.count("generation.resumed") == 1
    assert [e.id for e in seen + rest] == [e.stream_seq for e in events], "SSE saw all, once"
    assert await files_of(client, gid) == await files_of(client, clean["generation_id"])
    if kind == "iterate":
        assert "version.based_on" in [e.type for e in seen], "killed after the manifest"
        await _assert_inherited_whole(client, events, parent["generation_id"], gid)
    resumed = next(e.event for e in events if isinstance(e.event, GenerationResumed))
    print(
        f"orchestrator SIGKILL ({kind}, {kill_point}): resumed at {resumed.from_phase}, "
        f"recovered in {recovered_s:.1f} s (ack wait 2 s)"
    )


async def _assert_inherited_whole(
    client: Any, events: list[StoredEvent], parent_id: str, generation_id: str
) -> None:
    """One manifest naming every parent file, no parent copies in the log, and every
    parent file the version did not change served with the parent's content."""
    manifests = [e.event for e in events if isinstance(e.event, VersionBasedOn)]
    assert len(manifests) == 1, "exactly one version.based_on"
    copies = [e for e in events if isinstance(e.event, FileWritten) and e.event.origin == "parent"]
    assert not copies, "no parent file copied into the log"
    parent = await files_of(client, parent_id)
    assert {f.path: f.sha256 for f in manifests[0].files} == parent
    kept = await files_of(client, generation_id)
    unchanged = [path for path, sha in parent.items() if kept.get(path) == sha]
    assert unchanged, "the iteration kept some parent files as they were"
    for path in unchanged:
        mine = await client.get(f"/generations/{generation_id}/files/{path}")
        theirs = await client.get(f"/generations/{parent_id}/files/{path}")
        assert mine.status_code == theirs.status_code == 200, (path, mine.text)
        assert mine.content == theirs.content, path


async def test_a_gateway_killed_mid_stream_is_replaced_and_the_client_resumes(
    processes: Processes, nats_server: EmbeddedNats, client_for: Any
) -> None:
    processes.start("storage")
    processes.start("orchestrator")
    first, url_1 = processes.gateway("gateway-1")
    _, url_2 = processes.gateway("gateway-2")
    accepted = await create(client_for(url_1))
    gid = accepted["generation_id"]

    seen = await follow(url_1, gid, until=lambda e: e.type == "phase.completed")
    first.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    rest = await follow(
        url_2, gid, last_event_id=seen[-1].id, until=lambda e: e.id == seen[-1].id + 1
    )
    resumed_s = time.monotonic() - killed_at
    rest = await follow(url_2, gid, last_event_id=rest[-1].id, received=rest)
    print(
        f"gateway SIGKILL: the client had its next event from the other gateway in {resumed_s:.2f} s"
    )

    events = await history(nats_server.url, gid)
    assert_a_whole_log(events)
    assert [e.id for e in seen + rest] == [e.stream_seq for e in events]


async def test_storage_killed_mid_batch_ends_with_the_read_model_of_a_clean_projection(
    tmp_path: Path, processes: Processes, nats_server: EmbeddedNats, client_for: Any
) -> None:
    storage = processes.start("storage", "storage-1")
    processes.start("orchestrator", KILN_OFFLINE_PHASE_DELAY="0")
    _, url = processes.gateway()
    client = client_for(url)
    accepted = [await create(client, entities=20) for _ in range(3)]
    # Kill the projector while it is busy with the files of these generations.
    await _wait_applied_some(client, accepted[0]["generation_id"])
    storage.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    processes.start("storage", "storage-2")
    for body in accepted:
        await wait_status(client, body["generation_id"], "completed")
    await _settled(client, [b["generation_id"] for b in accepted])
    print(
        f"storage SIGKILL: read model complete {time.monotonic() - killed_at:.1f} s after the kill"
    )
    after_crash = await _snapshot(processes.base_env["KILN_DATABASE_URL"])

    # A clean projection of the same stream into a new database, from the first event.
    processes.stop_all()
    clean_url = f"sqlite+aiosqlite:///{tmp_path / 'clean.db'}"
    clean = Processes(tmp_path, {**processes.base_env, "KILN_DATABASE_URL": clean_url})
    clean.migrate()
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().delete_consumer(streams.EVENTS_STREAM, streams.STORAGE_CONSUMER)
    await nc.close()
    clean.start("storage", "storage-clean")
    try:
        _, clean_gateway = clean.gateway("gateway-clean")
        await _settled(client_for(clean_gateway), [b["generation_id"] for b in accepted])
    finally:
        clean.stop_all()
    assert after_crash == await _snapshot(clean_url)


async def _wait_applied_some(client: Any, generation_id: str) -> None:
    """Wait until the read model holds some of the generation's files."""

    async def some() -> bool:
        response = await client.get(f"/generations/{generation_id}/files")
        return bool(response.status_code == 200 and response.json()["file_count"] > 0)

    await eventually(some, 30, 0.02, what=f"a file of {generation_id} in the read model")


async def _settled(client: Any, generation_ids: list[str]) -> None:
    """Wait until the read model has every generation's terminal event."""
    for generation_id in generation_ids:

        async def completed(generation_id: str = generation_id) -> bool:
            response = await client.get(f"/generations/{generation_id}/files")
            return bool(response.status_code == 200 and response.json()["status"] == "completed")

        await eventually(completed, 60, 0.05, what=f"the read model to settle {generation_id}")


async def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, wall-clock bookkeeping left out."""
    engine = create_async_engine(url)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                columns = [c for c in table.columns if c.name not in VOLATILE_COLUMNS]
                query = select(*columns).order_by(*table.primary_key.columns)
                rows[table.name] = [tuple(row) for row in (await conn.execute(query)).all()]
    finally:
        await engine.dispose()
    return rows
