"""The verifier service through a real nats-server: a command in, one result out, also when
the verifier taking it is SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts import streams, subjects
from contracts.codec import content_sha256
from contracts.events import FileWritten
from services.common.embedded_nats import EmbeddedNats
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from tests.support.processes import Processes
from tests.support.waiting import eventually
from tests.verifier.helpers import project, request, result_of, verify_once, write_generation
from tests.verifier.test_sandbox import _processes_with

pytestmark = pytest.mark.timeout(120)


async def test_a_command_in_a_result_out_for_the_version_at_upto_seq(
    nc: Client, settings: Settings
) -> None:
    js = nc.jetstream()
    files = project("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    project_id, generation_id, upto = await write_generation(js, files)
    # A later event of the log, not part of the version asked for.
    writer = GenerationWriter(
        js, project_id, generation_id, source="test", last_seq=upto,
        last_stream_seq=(await js.get_last_msg(streams.EVENTS_STREAM,
                                                subjects.generation_events(project_id, generation_id))).seq or 0,
    )  # fmt: skip
    bad = "def test_later():\n    assert False\n"
    await writer.emit(
        FileWritten, path="tests/test_later.py", content=bad, sha256=content_sha256(bad),
        size=len(bad), phase="tests",
    )  # fmt: skip
    service, result = await verify_once(settings, js, project_id, generation_id, upto)

    assert result.outcome == "completed", result.reason
    assert (result.passed, result.failed) == (2, 0)
    assert result.project_id == project_id and result.verifier == service.worker
    info = await js.consumer_info(streams.VERIFY_STREAM, streams.VERIFIER_CONSUMER)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_verifier_killed_mid_run_hands_the_command_to_another(
    nc: Client, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    js = nc.jetstream()
    marker = f"kiln-verify-kill-{uuid.uuid4().hex[:8]}"
    files = project(f"""
        import subprocess, sys

        def test_slow():
            subprocess.run([sys.executable, "-c", "import time; time.sleep(3)", "{marker}"])
    """)
    project_id, generation_id, upto = await write_generation(js, files)
    processes = Processes(
        tmp_path,
        {
            "NATS_URL": nats_server.url,
            "KILN_VERIFY_ACK_WAIT": "2",
            "KILN_VERIFY_TIMEOUT": "60",
            "KILN_LOG_LEVEL": "INFO",
        },
    )
    try:
        first = processes.start("verifier", "first")
        await request(js, project_id, generation_id, upto)
        await eventually(
            lambda: f"Verifying generation {generation_id}" in first.log,
            30,
            0.1,
            what=lambda: f"the first verifier to take the command: {first.log[-3000:]}",
        )
        first.signal(signal.SIGKILL)
        first.process.wait(10)
        await asyncio.sleep(0.5)
        assert _processes_with(marker) == [], "the killed verifier's sandbox died with it"
        second = processes.start("verifier", "second")

        result = await result_of(js, generation_id)
        await asyncio.sleep(1)
        state = (await js.stream_info(streams.VERIFY_RESULTS_STREAM)).state
    finally:
        processes.stop_all()

    assert result.outcome == "completed", result.reason
    assert result.passed == 1
    assert result.verifier.endswith(f":{second.process.pid}")
    assert state.messages == 1, "exactly one result is stored"
