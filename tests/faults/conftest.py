"""What the fault tests share: services as processes, a client, and the checks that compare
a generation that went through a fault with one that did not."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from httpx_sse import aconnect_sse

from contracts.events import TERMINAL_TAGS, event_tag
from contracts.phases import PHASE_NAMES
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import StoredEvent, read_generation
from tests.conftest import ALICE_KEY
from tests.support.processes import Processes

# Slow enough to hit a generation mid-phase, fast enough for CI.
PHASE_DELAY = "0.4"


@pytest.fixture
def processes(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Processes]:
    """Services as separate processes against this test's nats-server and SQLite file."""
    group = Processes(
        tmp_path,
        {
            "NATS_URL": nats_server.url,
            "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}",
            "KILN_DATA_DIR": str(tmp_path / "data"),
            "KILN_API_KEYS": f"alice:{ALICE_KEY}",
            "KILN_SECRET": "faults-secret",
            "KILN_OFFLINE_PHASE_DELAY": PHASE_DELAY,
            "KILN_COMMAND_ACK_WAIT": "2",
        },
    )
    group.migrate()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """`client_for(url)`: an HTTP client with Alice's key, closed at the end."""
    clients: list[httpx.AsyncClient] = []

    def make(url: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=30
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def create(client: httpx.AsyncClient, entities: int = 3) -> dict[str, Any]:
    """POST /generations with the standard fault-test schema; the 201 body."""
    from tests.support.stack import schema_with

    response = await client.post(
        "/generations", json={"project_name": "faults", "schema": schema_with(entities)}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def wait_status(
    client: httpx.AsyncClient, generation_id: str, *wanted: str, timeout: float = 90
) -> dict[str, Any]:
    """Poll the status until it is one of `wanted` (default: any terminal status)."""
    statuses = wanted or ("completed", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with_error = await client.get(f"/generations/{generation_id}")
        if with_error.status_code == 200:
            body = with_error.json()
            if body["status"] in statuses:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"generation {generation_id} never reached {statuses}: {body}")


async def follow(
    url: str,
    generation_id: str,
    *,
    last_event_id: int | None = None,
    until: Any = None,
    received: list[tuple[int, str, dict[str, Any]]] | None = None,
) -> list[tuple[int, str, dict[str, Any]]]:
    """Read the SSE stream (with Alice's key) until the terminal event or `until(event)`."""
    events = received if received is not None else []
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=60)) as client,
        aconnect_sse(
            client, "GET", f"/generations/{generation_id}/stream", headers=headers
        ) as source,
    ):
        async for message in source.aiter_sse():
            if not message.id:
                continue
            event = (int(message.id), message.event, message.json())
            events.append(event)
            if message.event in TERMINAL_TAGS or (until is not None and until(event)):
                break
    return events


async def history(nats_url: str, generation_id: str) -> list[StoredEvent]:
    """The generation's events as its subject holds them."""
    nc = await nats.connect(nats_url)
    try:
        return await read_generation(nc.jetstream(), generation_id)
    finally:
        await nc.close()


def assert_a_whole_log(events: list[StoredEvent]) -> None:
    """Seqs 1..n without a gap or a repeat, every phase completed once, one terminal event."""
    assert [e.event.seq for e in events] == list(range(1, len(events) + 1))
    tags = [event_tag(type(e.event)) for e in events]
    assert tags[0] == "generation.requested"
    assert tags[-1] == "generation.completed", tags[-5:]
    assert sum(tag in TERMINAL_TAGS for tag in tags) == 1
    completed = [e.event.phase for e in events if event_tag(type(e.event)) == "phase.completed"]  # type: ignore[attr-defined]
    assert completed == list(PHASE_NAMES)
    written = Counter(
        (e.event.path, e.event.sha256)  # type: ignore[attr-defined]
        for e in events
        if event_tag(type(e.event)) == "file.written"
    )
    assert not [key for key, n in written.items() if n > 1], "a file was written twice"


async def files_of(client: httpx.AsyncClient, generation_id: str) -> dict[str, str]:
    """path → sha256 of a version, from the read model."""
    listing = (await client.get(f"/generations/{generation_id}/files")).json()
    return {f["path"]: f["sha256"] for f in listing["files"]}
