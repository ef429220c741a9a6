"""Self-repair end to end: a version whose own tests fail goes back to the model with the
failures, through the real google-genai SDK and the OpenAI-compatible client against the
local fakes, with a real verifier, the real bubblewrap and the verify runtime.

The fake writes a tiny real project: `app/status.py` with a planted bug (a missing import)
and `tests/test_status.py`, whose tests the sandbox runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.events import MAX_OUTPUT_TAIL_CHARS
from services.common.embedded_nats import EmbeddedNats
from services.verifier.runtime import load_runtime
from tests.conftest import make_settings
from tests.fakes import FakeLLMServer, Reply
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.planted import (
    BUGGY,
    FIXED,
    STILL_BUGGY,
    STILL_BUGGY_2,
    TESTS,
    WORSE,
    planted,
)
from tests.support.stack import SSEEvent, Stack, running_stack, schema_with

# Repair rounds prove the same on either database: the `verification` column, its repair
# rounds included, is stored and read back on SQLite and PostgreSQL by
# tests/storage/test_verification.py and by test_rows.py's fold table (its repair cases).
pytestmark = [pytest.mark.timeout(300), pytest.mark.one_database]


@pytest.fixture(params=["gemini", "openai"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLLMServer]:
    server = FakeGemini() if request.param == "gemini" else FakeOpenAI()
    with server:
        yield server


@contextlib.asynccontextmanager
async def repair_stack(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeLLMServer, **env: str
) -> AsyncIterator[Stack]:
    settings = make_settings(
        tmp_path,
        nats_server.url,
        **{**fake.env(), "KILN_LLM_RETRY_DELAY": "0.01", "KILN_VERIFY_PICKUP": "30", **env},
    )
    async with running_stack(settings, verifier=True) as stack:
        yield stack


async def generate(stack: Stack, fake: FakeLLMServer) -> tuple[dict[str, Any], list[SSEEvent]]:
    accepted = await stack.create(schema_with(1), provider=fake.provider)
    events = await stack.events(accepted["stream_url"], timeout=240)
    status = await stack.wait_status(accepted["generation_id"], "completed", "failed")
    return status, events


def story(events: list[SSEEvent]) -> list[str]:
    """The verify and repair steps, as `verify.completed:failed`, `repair.completed:changed`."""
    out = []
    for e in events:
        if e.type == "verify.completed":
            out.append(f"verify:{e.data['verdict']}")
        elif e.type == "repair.completed":
            out.append(f"repair:{e.data['outcome']}")
        elif e.type == "repair.reverted":
            out.append("reverted")
    return out


def of(events: list[SSEEvent], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == kind]


def cli_watch(stack: Stack, generation_id: str) -> subprocess.CompletedProcess[str]:
    key = stack.alice.headers["Authorization"].split()[1]
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "watch", generation_id,
         "--url", stack.url, "--api-key", key],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_planted_bug_is_repaired_in_one_round_and_the_zip_passes_outside(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeLLMServer
) -> None:
    planted(fake, Reply(files=[{"path": "app/status.py", "content": FIXED}]))
    async with repair_stack(tmp_path, nats_server, fake) as stack:
        status, events = await generate(stack, fake)
        gid = status["generation_id"]
        archive = await stack.alice.get(f"/generations/{gid}/archive")
        diff = (await stack.alice.get(f"/generations/{gid}/diff")).json()
        shown = await asyncio.to_thread(cli_watch, stack, gid)

    assert status["status"] == "completed"
    assert story(events) == ["verify:failed", "repair:changed", "verify:passed"]
    [started] = of(events, "repair.started")
    assert started["round"] == 1 and started["failing_count"] == 1
    assert any("test_created" in t for t in started["failing"]), started
    [completed] = of(events, "repair.completed")
    assert completed["files_changed"] == ["app/status.py"]
    # The model was told the failure, and the file the traceback names.
    [call] = fake.calls_for("repair")
    assert "## Phase: repair" in call.prompt and "HTTPStatus" in call.prompt
    assert "test_created" in call.prompt
    # … and the end of the sandboxed run's captured output, which the failed verification
    # carries (capped) and the passing one does not.
    failed, passed = of(events, "verify.completed")
    tail = failed["output_tail"]
    assert "NameError: name 'HTTPStatus' is not defined" in tail and "1 failed, " in tail, tail
    assert len(tail) <= MAX_OUTPUT_TAIL_CHARS and not passed["output_tail"]
    output = call.prompt.split("## The end of the test run's output\n", 1)[1].split("\n## ", 1)[0]
    assert "FAILED tests/test_status.py::test_created - NameError" in output, output
    # llm.called counts the repair call; progress never goes back and stays below 100.
    assert [c["phase"] for c in of(events, "llm.called")][-1] == "repair"
    assert status["llm_calls"] == 8
    progress = [e.data["progress"] for e in events if e.data.get("progress") is not None]
    assert progress == sorted(progress)
    assert all(95 <= e.data["progress"] < 100 for e in events if e.type.startswith("repair."))
    verification = status["verification"]
    assert verification["status"] == "passed" and verification["repair_rounds"] == 1
    assert verification["headline"] == "verified: passed after 1 repair round"
    assert [r["status"] for r in verification["repairs"]] == ["changed"]
    # The diff view names the repair round that changed the file.
    [repaired] = [f for f in diff["files"] if f["path"] == "app/status.py"]
    assert repaired["repair_rounds"] == [1]
    # The CLI shows the rounds and ends with the verdict.
    assert shown.returncode == 0, shown.stderr
    assert "repair round 1: 1 test failing" in shown.stdout
    assert "repair round 1 changed app/status.py" in shown.stdout
    assert "verified: passed after 1 repair round" in shown.stdout

    outside = tmp_path / "outside"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        zipped.extractall(outside)
    assert (outside / "app/status.py").read_text() == FIXED
    runtime = load_runtime(None)
    run = await asyncio.create_subprocess_exec(
        str(runtime.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=outside,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await run.wait() == 0


async def test_a_model_that_never_fixes_it_stops_after_the_rounds_with_the_tests_named(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeLLMServer
) -> None:
    planted(
        fake,
        Reply(files=[{"path": "app/status.py", "content": STILL_BUGGY}]),
        Reply(files=[{"path": "app/status.py", "content": STILL_BUGGY_2}]),
    )
    async with repair_stack(tmp_path, nats_server, fake) as stack:
        status, events = await generate(stack, fake)
        gid = status["generation_id"]
        listing = (await stack.alice.get(f"/generations/{gid}/files")).json()
        shown = await asyncio.to_thread(cli_watch, stack, gid)

    assert status["status"] == "completed", "the files are kept and downloadable"
    assert story(events) == [
        "verify:failed", "repair:changed", "verify:failed", "repair:changed", "verify:failed",
    ]  # fmt: skip
    assert len(fake.calls_for("repair")) == 2, "KILN_REPAIR_ROUNDS is 2 by default"
    verification = status["verification"]
    assert verification["headline"] == "failed: 1 test still failing after 2 rounds"
    assert any("test_created" in f["test_id"] for f in verification["failures"])
    assert "app/status.py" in {f["path"] for f in listing["files"]}
    assert shown.returncode == 3, (shown.stdout, shown.stderr)
    assert "failed: 1 test still failing after 2 rounds" in shown.stderr
    assert "test_created" in shown.stdout


@pytest.mark.parametrize(
    ("cheat", "rule"),
    [
        (Reply(files=[], deletions=[{"path": "tests/test_status.py", "reason": "flaky"}]),
         "test_deleted"),
        (Reply(files=[{"path": "tests/test_status.py", "content": TESTS.replace(
            "def test_created", "@pytest.mark.skip\ndef test_created").replace(
            '"""The statuses."""\n', '"""The statuses."""\n\nimport pytest\n')}]),
         "test_skipped"),
        (Reply(files=[{"path": "tests/test_status.py",
                       "content": TESTS.replace("assert created() == 201", "assert True")}]),
         "assertion_weakened"),
        # The one path validator: a path outside the project, sent beside the true fix,
        # refuses the whole answer (the fix included).
        (Reply(files=[{"path": "../x.py", "content": "X = 1\n"},
                      {"path": "app/status.py", "content": FIXED}]),
         "unsafe_path"),
    ],
    ids=["delete", "skip", "assert-true", "unsafe-path"],
)  # fmt: skip
async def test_a_repair_that_cheats_is_rejected_with_the_rule_named(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeLLMServer, cheat: Reply, rule: str
) -> None:
    planted(fake, cheat)
    async with repair_stack(tmp_path, nats_server, fake) as stack:
        status, events = await generate(stack, fake)
        listing = (await stack.alice.get(f"/generations/{status['generation_id']}/files")).json()
        module = await stack.alice.get(
            f"/generations/{status['generation_id']}/files/app/status.py"
        )

    named = "../x.py" if rule == "unsafe_path" else "tests/test_status.py"
    assert status["status"] == "completed"
    assert story(events) == ["verify:failed", "repair:rejected"]
    [retry] = [e for e in of(events, "llm.retrying") if e["phase"] == "repair"]
    assert retry["reason"] == "guard_rejected" and named in retry["message"]
    assert len(fake.calls_for("repair")) == 2, "one corrective retry"
    [completed] = of(events, "repair.completed")
    assert completed["rules"] == [rule] and rule in completed["reason"]
    assert completed["files_changed"] == [] and completed["deleted"] == []
    assert status["verification"]["headline"] == (
        f"failed: 1 test still failing after 1 round (round 1 rejected: {rule})"
    )
    # Nothing of the rejected answer reached the version's files.
    assert not [e for e in events if e.type in ("file.written", "file.deleted")
                and e.data.get("phase") == "repair"]  # fmt: skip
    assert {f["path"] for f in listing["files"]} >= {"app/status.py", "tests/test_status.py"}
    assert not any(".." in f["path"] for f in listing["files"])
    assert module.text == BUGGY


async def test_a_round_that_makes_things_worse_is_reverted_and_the_loop_stops(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    with FakeOpenAI() as fake:
        planted(fake, Reply(files=[{"path": "app/status.py", "content": WORSE}]))
        async with repair_stack(tmp_path, nats_server, fake) as stack:
            status, events = await generate(stack, fake)
            files = await stack.alice.get(
                f"/generations/{status['generation_id']}/files/app/status.py"
            )

    assert story(events) == ["verify:failed", "repair:changed", "verify:failed", "reverted"]
    [reverted] = of(events, "repair.reverted")
    assert reverted["files"] == ["app/status.py"]
    assert reverted["restored"]["round"] == 0 and reverted["restored"]["failed"] == 1
    assert files.text == BUGGY, "the round's change was put back"
    verification = status["verification"]
    assert verification["round"] == 0 and verification["failed"] == 1
    assert verification["repairs"][0]["status"] == "reverted"
    assert verification["headline"].startswith(
        "failed: 1 test still failing after 1 round (round 1 reverted: "
    )


async def test_repair_rounds_0_turns_repair_off(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    with FakeGemini() as fake:
        planted(fake, Reply(files=[{"path": "app/status.py", "content": FIXED}]))
        async with repair_stack(tmp_path, nats_server, fake, KILN_REPAIR_ROUNDS="0") as stack:
            status, events = await generate(stack, fake)

    assert story(events) == ["verify:failed"]
    assert fake.calls_for("repair") == []
    assert status["verification"]["headline"] == "failed: 1 test failing"
