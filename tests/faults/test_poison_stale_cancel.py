"""Poison messages are parked with a reason and block nothing; an abandoned generation is
failed by the watchdog, never "running" forever; a cancel stops at the next step and keeps
the files written so far."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import nats

from contracts import streams, subjects
from contracts.events import event_tag
from services.common.embedded_nats import EmbeddedNats
from tests.conftest import make_settings
from tests.faults.conftest import assert_a_whole_log, create, follow, history, wait_status
from tests.support.environment import service_env
from tests.support.processes import Processes
from tests.support.stack import running_stack, schema_with
from tests.support.waiting import eventually


async def test_poison_commands_are_dead_lettered_with_a_reason_and_block_nothing(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings) as stack:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            for poison in [b"\xff\xfe not json", b'{"type": "generate.requested"}', b"{}"]:
                await js.publish(subjects.GENERATE_COMMANDS, poison)
            await stack.create_completed(schema_with(1))

            async def three_letters() -> bool:
                return (await js.stream_info(streams.DLQ_STREAM)).state.messages >= 3

            await eventually(three_letters, 20, 0.1, what="three dead letters")
            letters = [await js.get_msg(streams.DLQ_STREAM, seq) for seq in range(1, 4)]
        finally:
            await nc.close()
    assert [m.subject for m in letters] == ["kiln.dlq.orchestrator"] * 3
    for letter in letters:
        headers = letter.headers or {}
        assert headers["Kiln-Dlq-Reason"], headers
        assert headers["Kiln-Dlq-Subject"] == subjects.GENERATE_COMMANDS
        assert headers["Kiln-Dlq-Deliveries"] == "1", "never redelivered"


async def test_a_generation_whose_orchestrator_died_for_good_is_failed_by_the_watchdog(
    tmp_path: Path, nats_server: EmbeddedNats, client_for: Any
) -> None:
    env = service_env(
        tmp_path,
        nats_server.url,
        KILN_OFFLINE_PHASE_DELAY="2",
        KILN_COMMAND_ACK_WAIT="1",
        KILN_COMMAND_MAX_DELIVER="1",
        KILN_STALE_RUN_AFTER="3",
    )
    processes = Processes(tmp_path, env)
    processes.migrate()
    try:
        processes.start("storage")
        doomed = processes.start("orchestrator", "orchestrator-1")
        _, url = processes.gateway()
        client = client_for(url)
        accepted = await create(client)
        gid = accepted["generation_id"]
        await follow(url, gid, until=lambda e: e.type == "phase.started")
        doomed.signal(signal.SIGKILL)
        # Another orchestrator runs, but the command has used its only delivery.
        processes.start("orchestrator", "orchestrator-2")
        status = await wait_status(client, gid, timeout=60)
    finally:
        processes.stop_all()
    assert status["status"] == "failed", status
    assert status["error"]["kind"] == "abandoned", status
    assert "stopped" in status["error"]["message"]


async def test_cancel_stops_a_running_generation_and_keeps_its_files(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.5")
    async with running_stack(settings) as stack:
        accepted = await stack.create(schema_with(2))
        gid = accepted["generation_id"]
        async for event in stack.follow(accepted["stream_url"]):
            if event.type == "phase.completed" and event.data["phase"] == "models":
                break
        response = await stack.alice.post(f"/generations/{gid}/cancel", json={"reason": "enough"})
        assert response.status_code == 202, response.text
        status = await stack.wait_status(gid)
        files = (await stack.alice.get(f"/generations/{gid}/files")).json()
        again = await stack.alice.post(f"/generations/{gid}/cancel")
    events = await history(nats_server.url, gid)
    assert status["status"] == "cancelled"
    assert event_tag(type(events[-1].event)) == "generation.cancelled"
    phases = {e.event.phase for e in events if event_tag(type(e.event)) == "phase.completed"}  # type: ignore[attr-defined]
    assert "models" in phases and "docs" not in phases, "stopped at the next step"
    assert files["file_count"] == events[-1].event.files_kept > 0  # type: ignore[attr-defined]
    assert again.status_code == 409


async def test_cancel_of_a_pending_generation_ends_it_before_it_starts(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))
        gid = accepted["generation_id"]
        response = await stack.alice.post(f"/generations/{gid}/cancel")
        assert response.status_code == 202, response.text
        assert (await stack.wait_status(gid))["status"] == "cancelled"
        # An orchestrator that comes later does not run it.
        stack.start_orchestrator()
        await asyncio.sleep(1.5)
        assert (await stack.alice.get(f"/generations/{gid}")).json()["status"] == "cancelled"
    tags = [event_tag(type(e.event)) for e in await history(nats_server.url, gid)]
    assert tags == ["generation.requested", "generation.cancelled"]


__all__ = ["assert_a_whole_log"]
