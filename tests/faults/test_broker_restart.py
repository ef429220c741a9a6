"""nats-server killed and restarted on the same store mid-generation: every service
reconnects within seconds, the generation completes, and an SSE client that stayed
connected to the gateway gets every event exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.common.embedded_nats import EmbeddedNats
from tests.conftest import make_settings
from tests.faults.conftest import PHASE_DELAY, assert_a_whole_log, history
from tests.support.stack import SSEEvent, running_stack, schema_with


async def test_a_broker_restart_mid_generation_loses_and_repeats_nothing(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(
        tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY=PHASE_DELAY, KILN_COMMAND_ACK_WAIT="5"
    )
    async with running_stack(settings) as stack:
        accepted = await stack.create(schema_with(3))
        gid = accepted["generation_id"]
        received: list[SSEEvent] = []
        arrivals: list[float] = []
        first_phase_done = asyncio.Event()

        async def watch() -> None:
            async for event in stack.follow(accepted["stream_url"], timeout=120):
                received.append(event)
                arrivals.append(time.monotonic())
                if event.type == "phase.completed":
                    first_phase_done.set()

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(first_phase_done.wait(), 60)
        nats_server.kill()
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        nats_server.start()
        up_at = time.monotonic()
        await asyncio.wait_for(watcher, 120)
        status = await stack.wait_status(gid, timeout=60)

    events = await history(nats_server.url, gid)
    assert status["status"] == "completed", status
    assert_a_whole_log(events)
    assert [e.id for e in received] == [e.stream_seq for e in events], "each event once"
    next_event = min((t for t in arrivals if t > up_at), default=float("nan"))
    print(
        f"broker restart: down {up_at - down_at:.1f} s, first event after restart in "
        f"{next_event - up_at:.1f} s"
    )
