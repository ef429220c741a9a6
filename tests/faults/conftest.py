"""What the fault tests share: services as processes, a client, and the checks that compare
a generation that went through a fault with one that did not."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from contracts.events import TERMINAL_TAGS, event_tag
from contracts.phases import PHASE_NAMES
from examples.schemas import schema_with
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import StoredEvent, read_generation
from tests.support import client as kiln
from tests.support.client import SSEEvent, ended
from tests.support.environment import ALICE_KEY, service_env
from tests.support.processes import Processes


@pytest.fixture(autouse=True)
def _each_database(database: str) -> str:
    """Every test here that runs Kiln's services runs once per database (tests/conftest.py)."""
    return database


# Slow enough to hit a generation mid-phase, fast enough for CI.
PHASE_DELAY = "0.4"


@pytest.fixture
def processes(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Processes]:
    """Services as separate processes against this test's nats-server and SQLite file."""
    env = service_env(
        tmp_path,
        nats_server.url,
        KILN_OFFLINE_PHASE_DELAY=PHASE_DELAY,
        KILN_COMMAND_ACK_WAIT="2",
    )
    group = Processes(tmp_path, env)
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
        clients.append(kiln.connect(url, ALICE_KEY))
        return clients[-1]

    yield make
    for each in clients:
        await each.aclose()


async def create(http: httpx.AsyncClient, entities: int = 3) -> dict[str, Any]:
    """POST /generations with the standard fault-test schema; the 201 body."""
    return await kiln.create(http, schema_with(entities), project_name="faults", prompt="")


async def follow(
    url: str,
    generation_id: str,
    *,
    last_event_id: int | None = None,
    until: Callable[[SSEEvent], bool] | None = None,
    received: list[SSEEvent] | None = None,
) -> list[SSEEvent]:
    """Read the generation's stream (with Alice's key) to its terminal event or `until`."""
    return await kiln.read_stream(
        url,
        f"/generations/{generation_id}/stream",
        key=ALICE_KEY,
        last_event_id=last_event_id,
        until=lambda event: ended(event) or (until is not None and until(event)),
        received=received,
        timeout=180,
    )


# The fault suite's patience: a generation that goes through a fault takes longer.
wait_status = functools.partial(kiln.wait_status, timeout=90, every_s=0.1)
files_of = kiln.files_of


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
