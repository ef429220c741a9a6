"""A finished generation with a large replay (hundreds of files, megabytes of history),
built the way a user would: POST /generations to a gateway whose orchestrator runs the
offline provider, then read to its end. For tests and benches of SSE clients that replay
it (or never read it)."""

from __future__ import annotations

from examples.schemas import schema_with
from tests.support import client as kiln
from tests.support.client import SSEEvent

ENTITIES = 200
"""A 200-entity project: ~500 files, a few MiB of history."""


async def large_replay(url: str, key: str, entities: int = ENTITIES) -> tuple[str, list[SSEEvent]]:
    """A finished generation of `entities` entities created with `key` at the gateway at
    `url`: its stream URL (with a token) and its every event."""
    async with kiln.connect(url, key, timeout=120) as http:
        accepted = await kiln.create(http, schema_with(entities), project_name="big", prompt="")
        await kiln.wait_status(http, accepted["generation_id"], "completed", timeout=300)
        events = await kiln.read_events(http, accepted["stream_url"], timeout=120)
    assert events[-1].type == "generation.completed"
    return accepted["stream_url"], events
