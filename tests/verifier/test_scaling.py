"""Verifiers scale like orchestrators (issue #14 item 1): any number of `kiln verifier`
processes on one broker share the verify commands through the durable work-queue consumer;
each version is verified once, by one of them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts import streams
from services.common.embedded_nats import EmbeddedNats
from tests.conftest import make_settings
from tests.support.processes import Processes
from tests.support.stack import running_stack
from tests.verifier.helpers import ScriptedProvider, generate, wait_log

pytestmark = pytest.mark.timeout(240)

VERSIONS = 4


async def test_two_verifiers_share_the_work_and_verify_each_version_once(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    # One version at a time each: while one verifier runs a version's tests, the commands
    # queued meanwhile can only go to the other.
    processes = Processes(
        tmp_path,
        {
            "NATS_URL": nats_server.url,
            "KILN_VERIFY_CONCURRENCY": "1",
            "KILN_VERIFY_TIMEOUT": "60",
            "KILN_LOG_LEVEL": "INFO",
        },
    )
    settings = make_settings(
        tmp_path, nats_server.url, KILN_VERIFY_PICKUP="60", KILN_ORCHESTRATOR_CONCURRENCY="4"
    )
    try:
        verifiers = [processes.start("verifier", name) for name in ("first", "second")]
        for verifier in verifiers:
            await wait_log(verifier, "taking verify commands")
        provider = ScriptedProvider({})
        async with running_stack(settings, providers={"offline": provider}) as stack:
            generations = await asyncio.gather(
                *(generate(stack, nc, "normal") for _ in range(VERSIONS))
            )
            stored = (await nc.jetstream().stream_info(streams.VERIFY_RESULTS_STREAM)).state
        logs = [verifier.log for verifier in verifiers]
        pids = [verifier.process.pid for verifier in verifiers]
    finally:
        processes.stop_all()

    # Each version: exactly one verify.completed (`generate` checked there are two verify
    # events, the first verify.started), passed, and one stored result.
    for generation in generations:
        assert generation.completed["verdict"] == "passed", generation.completed
        assert (generation.completed["passed"], generation.completed["failed"]) == (1, 0)
        assert generation.events.count("verify.completed") == 1
    assert len({g.result.generation_id for g in generations}) == VERSIONS
    assert stored.messages == VERSIONS, "exactly one result per version"

    # Both verifier processes did work, and each version was taken by exactly one of them.
    by = [int(g.completed["verifier"].rpartition(":")[2]) for g in generations]
    assert set(by) == set(pids), (by, pids)
    for generation, pid in zip(generations, by, strict=True):
        started = f"Verifying generation {generation.result.generation_id}"
        assert [started in log for log in logs] == [pid == p for p in pids], (started, logs)
