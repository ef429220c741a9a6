"""An orchestrator SIGKILLed during a repair round: another resumes the generation at that
round and finishes it; no round runs twice (the gemini fake, a real verifier process). The
same for an iteration, whose parent's files the resumed orchestrator reads back by content
(`version.based_on`, #20)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from contracts.events import event_tag
from examples.schemas import schema_with
from services.common.embedded_nats import EmbeddedNats
from tests.fakes import Reply
from tests.fakes.gemini_server import FakeGemini
from tests.faults.conftest import assert_a_whole_log, follow, history, wait_status
from tests.support import client as kiln

# Repair rounds prove the same on either database: the `verification` column, its repair
# rounds included, is stored and read back on SQLite and PostgreSQL by
# tests/storage/test_verification.py and by test_rows.py's fold table (its repair cases).
pytestmark = [pytest.mark.timeout(300), pytest.mark.one_database]

FIXED = {
    "path": "app/status.py",
    "content": '"""Statuses."""\n\nfrom http import HTTPStatus\n\n\ndef created() -> int:\n'
    "    return HTTPStatus.CREATED\n",
}
BUGGY = {
    "path": "app/status.py",
    "content": FIXED["content"].replace("from http import HTTPStatus\n\n", ""),
}
TESTS = {
    "path": "tests/test_status.py",
    "content": "from app.status import created\n\n\ndef test_created() -> None:\n"
    "    assert created() == 201\n",
}


async def test_an_orchestrator_killed_in_a_repair_round_resumes_that_round_once(
    processes: Any, nats_server: EmbeddedNats, client_for: Any, tmp_path: Path
) -> None:
    with FakeGemini() as fake:
        fake.on("api", Reply(extra=[BUGGY]))
        fake.on("tests", Reply(extra=[TESTS]))
        # The first repair answer streams slowly: the orchestrator dies in the middle of it.
        fake.on("repair", Reply(files=[FIXED], chunks=20, delay_s=0.5), Reply(files=[FIXED]))
        env = {**fake.env(), "KILN_VERIFY_PICKUP": "30", "KILN_OFFLINE_PHASE_DELAY": "0"}
        processes.start("storage")
        processes.start("verifier", **env)
        first = processes.start("orchestrator", "orchestrator-1", **env)
        _, url = processes.gateway(**env)
        client = client_for(url)
        accepted = await kiln.create(
            client, schema_with(1), project_name="repair", provider="gemini"
        )
        gid = accepted["generation_id"]
        seen = await follow(
            url, gid, until=lambda e: e.type == "phase.progress" and e.data["phase"] == "repair"
        )
        first.signal(signal.SIGKILL)
        processes.start("orchestrator", "orchestrator-2", **env)
        rest = await follow(url, gid, last_event_id=seen[-1].id)
        status = await wait_status(client, gid, "completed")

    events = await history(nats_server.url, gid)
    assert_a_whole_log(events)
    tags = Counter(event_tag(type(e.event)) for e in events)
    assert tags["generation.resumed"] == 1
    assert tags["repair.started"] == 1 and tags["repair.completed"] == 1, "no round twice"
    assert tags["verify.started"] == tags["verify.completed"] == 2
    assert [e.type for e in seen + rest if e.type.startswith(("verify.c", "repair."))] == [
        "verify.completed", "repair.started", "repair.completed", "verify.completed",
    ]  # fmt: skip
    assert len(fake.calls_for("repair")) == 2, "the unfinished round was asked again, once"
    assert status["verification"]["headline"] == "verified: passed after 1 repair round"


async def test_an_iteration_killed_in_its_repair_round_resumes_it_knowing_its_parent(
    processes: Any, nats_server: EmbeddedNats, client_for: Any, tmp_path: Path
) -> None:
    with FakeGemini() as fake:
        fake.on("api", Reply(extra=[FIXED]))
        fake.on("tests", Reply(extra=[TESTS]))
        env = {**fake.env(), "KILN_VERIFY_PICKUP": "30", "KILN_OFFLINE_PHASE_DELAY": "0"}
        processes.start("storage")
        processes.start("verifier", **env)
        first = processes.start("orchestrator", "orchestrator-1", **env)
        _, url = processes.gateway(**env)
        client = client_for(url)
        v1 = await kiln.create(client, schema_with(1), project_name="repair", provider="gemini")
        parent = await wait_status(client, v1["generation_id"], "completed")
        assert parent["verification"]["status"] == "passed", parent["verification"]

        # Version 2 drops the import its parent's test needs; the first repair answer
        # streams slowly and the orchestrator dies in the middle of it.
        fake.on("api", Reply(extra=[BUGGY]))
        fake.on("repair", Reply(files=[FIXED], chunks=20, delay_s=0.5), Reply(files=[FIXED]))
        v2 = await kiln.iterate(client, v1["generation_id"], "say what the module is for",
                                provider="gemini")  # fmt: skip
        gid = v2["generation_id"]
        seen = await follow(
            url, gid, until=lambda e: e.type == "phase.progress" and e.data["phase"] == "repair"
        )
        first.signal(signal.SIGKILL)
        processes.start("orchestrator", "orchestrator-2", **env)
        rest = await follow(url, gid, last_event_id=seen[-1].id)
        status = await wait_status(client, gid, "completed")

    events = await history(nats_server.url, gid)
    assert_a_whole_log(events)
    tags = Counter(event_tag(type(e.event)) for e in events)
    assert tags["version.based_on"] == 1 and tags["generation.resumed"] == 1
    assert tags["repair.started"] == 1 and tags["repair.completed"] == 1, "no round twice"
    assert [e.type for e in seen + rest if e.type.startswith(("verify.c", "repair."))] == [
        "verify.completed", "repair.started", "repair.completed", "verify.completed",
    ]  # fmt: skip
    # Asked again once, after the resume, still knowing it is an iteration of a passing
    # parent and which files the iteration changed (the parent's read back by content).
    killed, resumed = fake.calls_for("repair")
    for call in (killed, resumed):
        assert "## This iteration broke passing tests" in call.prompt
        [changed] = [
            line for line in call.prompt.splitlines()
            if line.startswith("Changed or added in this iteration so far:")
        ]  # fmt: skip
        assert "app/status.py" in changed and "tests/test_status.py" not in changed, changed
    assert status["verification"]["headline"] == "verified: passed after 1 repair round"
