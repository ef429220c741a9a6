"""SSE streams leave nothing behind: a client that disconnects releases its watcher, and
the generation's consumer goes once nobody has watched it for a while."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats

from contracts import streams, subjects
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings
from services.gateway.hub import IDLE_LOG_TTL_S
from tests.support.stack import running_stack, schema_with
from tests.support.waiting import eventually


async def _generation_consumers(url: str, generation_id: str) -> tuple[int, int]:
    """The consumers reading the generation's events: (all, those a client is subscribed to).

    Under load nats-py may recreate an ordered consumer (missed heartbeats, a reconnect); the
    one it left stays on the server, unbound, until its inactivity threshold."""
    subject = subjects.generation_events_any_project(generation_id)
    nc = await nats.connect(url)
    try:
        infos = await nc.jetstream().consumers_info(streams.EVENTS_STREAM)
    finally:
        await nc.close()
    ours = [
        info
        for info in infos
        if info.config.filter_subject == subject or subject in (info.config.filter_subjects or ())
    ]
    return len(ours), sum(1 for info in ours if info.push_bound)


async def test_disconnected_clients_leave_no_watcher_task_or_consumer(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))  # pending: its stream never ends
        gid = accepted["generation_id"]
        gateway = stack.server.config.app.state["gateway"]  # type: ignore[union-attr]

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
            assert gateway.stats.direct == 5, "each body straight to its connection"
            assert (await _generation_consumers(nats_server.url, gid))[1] == 1, "one for all five"
            for response in responses:
                await response.aclose()

        await eventually(lambda: gateway.stats.open == 0, 10)
        assert gateway.hub.logs[gid].watchers == 0
        assert (await _generation_consumers(nats_server.url, gid))[1] == 1, "kept for a while"
        gateway.hub.sweep(time.monotonic() + IDLE_LOG_TTL_S + 1)

        async def consumer_gone() -> bool:
            return await _generation_consumers(nats_server.url, gid) == (0, 0)

        await eventually(consumer_gone, 20, 0.1, what="the generation's consumer to go")
        assert not [t for t in asyncio.all_tasks() if "WatchSession" in repr(t.get_coro())]


async def _read_until(reader: asyncio.StreamReader, marker: bytes, received: bytes) -> bytes:
    while marker not in received:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"the connection closed before {marker!r}"
        received += chunk
    return received


async def test_a_request_pipelined_behind_a_stream_is_served_once_the_stream_ends(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    # The stream's body goes straight to the connection; its end still goes through
    # uvicorn, which then serves the next request on the same connection.
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))
        gateway = stack.server.config.app.state["gateway"]  # type: ignore[union-attr]
        host, port = stack.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"GET {accepted['stream_url']} HTTP/1.1\r\nHost: kiln\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n".encode()
            )
            received = await _read_until(reader, b"event: generation.requested", b"")
            assert gateway.stats.direct == 1
            cancelled = await stack.alice.post(f"/generations/{accepted['generation_id']}/cancel")
            assert cancelled.status_code == 202
            received = await _read_until(reader, b'"status":"ok"', received)
            head, _, rest = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
            body, _, after = rest.partition(b"\r\n0\r\n\r\n")
            assert b"event: generation.cancelled" in body
            assert after.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
        await eventually(lambda: gateway.stats.open == 0, 10)


async def test_a_client_gone_with_a_request_pipelined_behind_its_stream_ends_the_stream(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))  # pending: its stream never ends
        gateway = stack.server.config.app.state["gateway"]  # type: ignore[union-attr]
        host, port = stack.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {accepted['stream_url']} HTTP/1.1\r\nHost: kiln\r\n\r\n"
            "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n".encode()
        )
        await _read_until(reader, b"event: generation.requested", b"")
        assert gateway.stats.open == 1
        writer.close()
        await eventually(lambda: gateway.stats.open == 0, 10)
