"""SSE streams leave nothing behind: a client that disconnects releases its watcher, and
the replay consumers are gone once a replay has finished; only the shared live
subscription stays."""

from __future__ import annotations

import asyncio

import httpx
import nats

from contracts import streams
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings
from tests.support.stack import running_stack, schema_with
from tests.support.waiting import eventually


async def _event_consumers(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(streams.EVENTS_STREAM)
        return int(info.state.consumer_count)
    finally:
        await nc.close()


async def test_disconnected_clients_leave_no_watcher_task_or_consumer(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))  # pending: its stream never ends
        gid = accepted["generation_id"]
        gateway = stack.server.config.app.state["gateway"]  # type: ignore[union-attr]
        before = await _event_consumers(nats_server.url)

        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            responses = [
                await client.send(client.build_request("GET", accepted["stream_url"]), stream=True)
                for _ in range(5)
            ]
            assert all(r.status_code == 200 for r in responses)
            await eventually(lambda: gateway.stats.open == 5 and gateway.hub.logs[gid].replayed, 10)
            assert gateway.stats.open == 5
            assert gateway.hub.logs[gid].watchers == 5
            assert gateway.hub.replays_started == 1, "one replay shared by every client"
            for response in responses:
                await response.aclose()

        await eventually(lambda: gateway.stats.open == 0, 10)
        assert gateway.hub.logs[gid].watchers == 0

        async def replay_consumer_gone() -> bool:
            return await _event_consumers(nats_server.url) <= before

        await eventually(replay_consumer_gone, 20, 0.1, what="the replay consumer to go")
        assert not [t for t in asyncio.all_tasks() if "WatchSession" in repr(t.get_coro())]
