"""The orchestrator service: a long provider call keeps its command, so the work queue never
hands a live job to another orchestrator."""

from __future__ import annotations

import asyncio
from pathlib import Path

from contracts.events import event_tag
from contracts.phases import GeneratedFile, PhaseOutput
from services.common.embedded_nats import EmbeddedNats
from services.orchestrator.providers.base import PhaseRequest, Reporter
from services.orchestrator.service import OrchestratorService
from tests.conftest import make_settings
from tests.faults.conftest import assert_a_whole_log, history
from tests.support.stack import running_stack, schema_with


class SlowModel:
    """A model that takes three ack waits to answer the models phase."""

    name = "offline"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[str] = []

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        self.calls.append(request.phase)
        if request.phase == "models":
            await asyncio.sleep(self.seconds)
        if request.phase == "verify":
            return PhaseOutput(summary="ok")
        return PhaseOutput(
            files=[GeneratedFile(f"{request.phase}.py", f"PHASE = {request.phase!r}\n")]
        )


async def test_a_long_call_keeps_its_command_from_other_orchestrators(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_COMMAND_ACK_WAIT="1")
    first, second = SlowModel(3.5), SlowModel(3.5)
    async with running_stack(settings, providers={"offline": first}) as stack:
        other = asyncio.create_task(
            OrchestratorService(settings, {"offline": second}).run(stack.stop_services)
        )
        accepted = await stack.create(schema_with(1))
        status = await stack.wait_status(accepted["generation_id"], timeout=60)
    await other
    events = await history(nats_server.url, accepted["generation_id"])
    assert status["status"] == "completed"
    assert_a_whole_log(events)
    assert "generation.resumed" not in [event_tag(type(e.event)) for e in events]
    assert sorted([first.calls, second.calls], key=len) == [
        [],
        ["plan", "models", "schemas", "api", "tests", "docs", "verify"],
    ], "one orchestrator did all of it"
