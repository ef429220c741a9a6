"""SSE clients that never read, against a real gateway process and a large replay: each is
cut at the write deadline and resumes with Last-Event-ID; what the gateway holds for them
meanwhile is bounded (its RSS, from /proc); beyond the gateway-wide caps new streams answer
503 with Retry-After."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services.common.embedded_nats import EmbeddedNats
from tests.ops.cluster import scrape
from tests.support import client as kiln
from tests.support.environment import ALICE_KEY, service_env
from tests.support.pressure import MIB, probing
from tests.support.processes import Processes
from tests.support.raw_http import address, drain
from tests.support.replays import large_replay
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ENTITIES = 200  # ~500 files, a few MiB of history
READERS = 200  # clients that never read
WRITE_TIMEOUT_S = 3.0
MAX_WRITE_BYTES = 64 * 1024
UNSENT_CAP = 1 * MIB


@pytest.fixture
def processes(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Processes]:
    """Storage and an orchestrator as processes; the tests start their own gateways."""
    group = Processes(
        tmp_path, service_env(tmp_path, nats_server.url, KILN_GENERATIONS_PER_MINUTE="0")
    )
    group.migrate()
    group.start("storage")
    group.start("orchestrator")
    try:
        yield group
    finally:
        group.stop_all()


def _non_reader(url: str, stream_url: str) -> socket.socket:
    """A connection that asks for the stream and then never reads (a 4 KiB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address(url))
    sock.sendall(f"GET {stream_url} HTTP/1.1\r\nHost: kiln\r\n\r\n".encode())
    return sock


def _last_whole_event_id(received: bytes) -> int:
    ids = re.findall(rb"id: (\d+)\nevent: [^\n]+\ndata: [^\n]*\n\n", received)
    return int(ids[-1]) if ids else 0


async def test_clients_that_never_read_are_cut_and_hold_a_bounded_amount(
    processes: Processes,
) -> None:
    gateway, url = processes.gateway(
        KILN_SSE_WRITE_TIMEOUT=str(WRITE_TIMEOUT_S),
        KILN_SSE_MAX_WRITE_BYTES=str(MAX_WRITE_BYTES),
    )
    stream_url, events = await large_replay(url, ALICE_KEY, ENTITIES)
    replay_bytes = sum(len(msgspec.json.encode(e.data)) for e in events)

    sockets: list[socket.socket] = []
    try:
        async with probing(gateway, url) as probe:
            for _ in range(READERS):
                sockets.append(await asyncio.to_thread(_non_reader, url, stream_url))

            async def all_cut() -> bool:
                metrics = await scrape(url)
                return metrics.get("kiln_gateway_sse_connections", 0) == 0

            try:
                await eventually(all_cut, 60, 0.25, what="every non-reading stream to be cut")
            finally:
                probe.report(
                    f"{READERS} SSE clients that never read a {len(events)}-event replay "
                    f"(~{replay_bytes / MIB:.1f} MiB)"
                )
        metrics = await scrape(url)
        assert metrics['kiln_gateway_sse_streams_cut_total{reason="stalled"}'] == READERS
        # Each stream held at most about two writes, plus its connection's own cost, and
        # the kernel at most one more (its send buffer is bounded to one write, doubled).
        assert probe.growth < READERS * (2 * MAX_WRITE_BYTES + 64 * 1024) + 16 * MIB
        assert probe.peak_kernel_queued <= READERS * 2 * MAX_WRITE_BYTES
        assert set(probe.statuses) == {200}

        # A cut client got part of the stream, never its end, and resumes where it was.
        received, closed = await asyncio.to_thread(drain, sockets[0], 5)
        assert closed and b"generation.completed" not in received
        after = _last_whole_event_id(received)
        async with kiln.connect(url, timeout=120) as http:
            rest = await kiln.read_events(http, stream_url, last_event_id=after, timeout=120)
        assert [e.id for e in rest] == [e.id for e in events if e.id > after]
    finally:
        for sock in sockets:
            sock.close()


async def test_beyond_the_gateway_wide_caps_streams_are_refused_or_shed(
    processes: Processes,
) -> None:
    # The non-readers stay until a cap acts: no write deadline within the test.
    capped, capped_url = processes.gateway(
        "gateway-streams", KILN_SSE_MAX_STREAMS="20", KILN_SSE_WRITE_TIMEOUT="600"
    )
    shedding, shedding_url = processes.gateway(
        "gateway-unsent",
        KILN_SSE_MAX_UNSENT_BYTES=str(UNSENT_CAP),
        KILN_SSE_WRITE_TIMEOUT="600",
    )
    stream_url, _ = await large_replay(capped_url, ALICE_KEY, ENTITIES)
    sockets: list[socket.socket] = []
    try:
        # 20 open streams is the cap: the 21st answers 503 with Retry-After.
        for _ in range(20):
            sockets.append(await asyncio.to_thread(_non_reader, capped_url, stream_url))

        async def twenty_open() -> bool:
            return (await scrape(capped_url)).get("kiln_gateway_sse_connections") == 20

        await eventually(twenty_open, 30, 0.1, what="20 streams open")
        async with (
            kiln.connect(capped_url, timeout=30) as http,
            http.stream("GET", stream_url) as response,
        ):
            assert response.status_code == 503
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["retry-after"]) > 0
        metrics = await scrape(capped_url)
        assert metrics['kiln_gateway_sse_streams_refused_total{reason="streams"}'] == 1

        # 40 non-readers would hold ~40 x 128 KiB: above the 1 MiB cap the longest-waiting
        # streams are cut, and the rest hold at most the cap.
        for _ in range(40):
            sockets.append(await asyncio.to_thread(_non_reader, shedding_url, stream_url))

        async def shed() -> dict[str, float] | None:
            metrics = await scrape(shedding_url)
            cut = metrics.get('kiln_gateway_sse_streams_cut_total{reason="shed"}', 0)
            settled = 0 < metrics["kiln_gateway_sse_unsent_bytes"] <= UNSENT_CAP
            return metrics if cut and settled else None

        # A write that began less than a watchdog period ago is not cut yet: the held bytes
        # come down to the cap at the next look.
        metrics = await eventually(shed, 30, 0.25, what="streams shed to the unsent cap")
        assert 0 < metrics["kiln_gateway_sse_connections"] < 40
    finally:
        for sock in sockets:
            sock.close()

    async def serves_again() -> bool:
        async with (
            kiln.connect(capped_url, timeout=30) as http,
            http.stream("GET", stream_url) as response,
        ):
            return response.status_code == 200

    # Once the clients are gone the gateway serves streams again.
    await eventually(serves_again, 30, 0.25, what="a stream served once the non-readers left")
    assert capped.process.poll() is None and shedding.process.poll() is None
