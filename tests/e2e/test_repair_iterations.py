"""Self-repair of iterations (#15, item 4): a new version whose result breaks the parent's
passing tests goes back to the model with the failures, the same way a created version
does, and the diff against the parent names the files the repair changed.

Both versions come from the gemini provider, through the real google-genai SDK against the
local fake, with a real verifier, the real bubblewrap and the verify runtime. Version 1 is
a tiny real project (`app/status.py` and `tests/test_status.py`) that verifies `passed`;
version 2 adds a status for DELETE routes and, in its first answer, breaks `created()`.
The parent's files reach version 2 by content (`version.based_on`, #20).
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.embedded_nats import EmbeddedNats
from services.verifier.runtime import load_runtime
from tests.e2e.test_repair import of, repair_stack, story
from tests.fakes import Reply
from tests.fakes.gemini_server import FakeGemini
from tests.support.stack import SSEEvent, Stack, schema_with

# Repair rounds prove the same on either database: the `verification` column, its repair
# rounds included, is stored and read back on SQLite and PostgreSQL by
# tests/storage/test_verification.py and by test_rows.py's fold table (its repair cases).
pytestmark = [pytest.mark.timeout(300), pytest.mark.one_database]

V1_STATUS = (
    '"""HTTP statuses."""\n\n\ndef created() -> int:\n    return 201\n\n\n'
    "def ok() -> int:\n    return 200\n"
)
V1_TESTS = (
    '"""The statuses."""\n\nfrom app.status import created, ok\n\n\n'
    "def test_created() -> None:\n    assert created() == 201\n\n\n"
    "def test_ok() -> None:\n    assert ok() == 200\n"
)
# The iteration adds deleted(), and its first answer breaks created() on the way.
BROKEN = (
    '"""HTTP statuses."""\n\n\ndef created() -> int:\n    return 200\n\n\n'
    "def ok() -> int:\n    return 200\n\n\ndef deleted() -> int:\n    return 204\n"
)
REPAIRED = BROKEN.replace("return 200\n\n\ndef ok", "return 201\n\n\ndef ok")
NEW_TESTS = (
    '"""The DELETE status."""\n\nfrom app.status import deleted\n\n\n'
    "def test_deleted() -> None:\n    assert deleted() == 204\n"
)
PROMPT = "add a deleted() status (204) for DELETE routes"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        server.on("api", Reply(extra=[{"path": "app/status.py", "content": V1_STATUS}]))
        server.on("tests", Reply(extra=[{"path": "tests/test_status.py", "content": V1_TESTS}]))
        yield server


async def passing_parent(stack: Stack, fake: FakeGemini) -> dict[str, Any]:
    """Version 1, verified `passed` without a repair round."""
    accepted = await stack.create(schema_with(1), provider=fake.provider)
    await stack.events(accepted["stream_url"], timeout=240)
    status = await stack.wait_status(accepted["generation_id"], "completed", "failed")
    assert status["status"] == "completed", status
    assert status["verification"]["headline"].startswith("verified: passed"), status
    assert status["verification"]["repair_rounds"] == 0
    assert fake.calls_for("repair") == []
    return status


async def iterate(
    stack: Stack, fake: FakeGemini, parent_id: str, *repairs: Reply
) -> tuple[dict[str, Any], list[SSEEvent]]:
    """Version 2 from `parent_id`: its api phase breaks created(); `repairs` answer in turn."""
    fake.on("api", Reply(extra=[{"path": "app/status.py", "content": BROKEN}]))
    fake.on("tests", Reply(extra=[{"path": "tests/test_deleted.py", "content": NEW_TESTS}]))
    fake.on("repair", *repairs)
    accepted = await stack.iterate(parent_id, PROMPT, provider=fake.provider)
    events = await stack.events(accepted["stream_url"], timeout=240)
    status = await stack.wait_status(accepted["generation_id"], "completed", "failed")
    return status, events


async def test_an_iteration_that_breaks_the_parents_tests_is_repaired_and_the_diff_says_so(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeGemini
) -> None:
    async with repair_stack(tmp_path, nats_server, fake) as stack:
        v1 = await passing_parent(stack, fake)
        v1_calls = len(fake.calls)
        status, events = await iterate(
            stack,
            fake,
            v1["generation_id"],
            Reply(files=[{"path": "app/status.py", "content": REPAIRED}]),
        )
        v2 = status["generation_id"]
        diff = (await stack.alice.get(f"/generations/{v2}/diff")).json()
        archive = await stack.alice.get(f"/generations/{v2}/archive")
        parent_test = await stack.alice.get(
            f"/generations/{v1['generation_id']}/files/tests/test_status.py"
        )

    assert status["status"] == "completed", status
    assert status["parent_generation_id"] == v1["generation_id"]
    assert story(events) == ["verify:failed", "repair:changed", "verify:passed"]
    # The iteration kept the parent's files by content, not by copies.
    [based_on] = of(events, "version.based_on")
    assert "tests/test_status.py" in {f["path"] for f in based_on["files"]}
    # The round names the parent's test the iteration broke, and only that one.
    [started] = of(events, "repair.started")
    assert started["round"] == 1 and started["failing_count"] == 1
    assert [t.rsplit("::", 1)[-1] for t in started["failing"]] == ["test_created"], started
    [completed] = of(events, "repair.completed")
    assert completed["outcome"] == "changed"
    assert completed["files_changed"] == ["app/status.py"] and completed["deleted"] == []
    # The model was told that the modification broke passing tests, which, and where.
    [call] = fake.calls_for("repair")
    assert "## Phase: repair" in call.prompt
    assert "## This iteration broke passing tests" in call.prompt
    assert "test_created" in call.prompt and PROMPT in call.prompt
    # ...with the files they point at quoted, the parent's test (inherited by content) too.
    assert "def test_ok() -> None:" in call.prompt and "return 204" in call.prompt
    # llm.called counts the repair call; progress never goes back and stays below 100
    # until the end.
    calls = of(events, "llm.called")
    assert [c["phase"] for c in calls][-1] == "repair"
    assert len(calls) == len(fake.calls) - v1_calls == 8, "7 phases and 1 repair"
    assert status["llm_calls"] == 8
    progress = [e.data["progress"] for e in events if e.data.get("progress") is not None]
    assert progress == sorted(progress) and progress[-1] == 100
    assert all(95 <= e.data["progress"] < 100 for e in events if e.type.startswith("repair."))
    verification = status["verification"]
    assert verification["status"] == "passed"
    assert verification["failed"] == verification["errors"] == 0
    assert verification["passed"] > v1["verification"]["passed"], "test_deleted is added"
    assert verification["headline"] == "verified: passed after 1 repair round"
    assert [r["status"] for r in verification["repairs"]] == ["changed"]

    # The diff against version 1 marks the file the repair changed, and only that one.
    assert diff["parent_generation_id"] == v1["generation_id"]
    by_path = {f["path"]: f for f in diff["files"]}
    assert by_path["app/status.py"]["status"] == "modified"
    assert by_path["app/status.py"]["repair_rounds"] == [1]
    assert by_path["tests/test_deleted.py"]["status"] == "added"
    assert by_path["tests/test_deleted.py"]["repair_rounds"] == []
    assert all(f["repair_rounds"] == [] for p, f in by_path.items() if p != "app/status.py")
    assert "tests/test_status.py" not in by_path, "the parent's test was not touched"
    assert "+    return 204" in by_path["app/status.py"]["diff"], "the modification is kept"
    assert "-    return 201" not in by_path["app/status.py"]["diff"], "created() is 201 again"
    assert parent_test.text == V1_TESTS, "version 1 is untouched"

    # The repaired version's zip passes pytest outside Kiln.
    outside = tmp_path / "outside"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        zipped.extractall(outside)
    assert (outside / "app/status.py").read_text() == REPAIRED
    assert (outside / "tests/test_status.py").read_text() == V1_TESTS
    runtime = load_runtime(None)
    run = await asyncio.create_subprocess_exec(
        str(runtime.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=outside,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await run.wait() == 0


@pytest.mark.parametrize(
    ("cheat", "rule"),
    [
        (Reply(files=[{"path": "tests/test_status.py",
                       "content": V1_TESTS.replace("assert created() == 201", "assert True")}]),
         "assertion_weakened"),
        (Reply(files=[{"path": "tests/test_status.py", "content": V1_TESTS.split(
            "def test_created")[0] + "def test_ok() -> None:\n    assert ok() == 200\n"}]),
         "test_removed"),
        (Reply(files=[], deletions=[{"path": "tests/test_status.py", "reason": "outdated"}]),
         "test_deleted"),
    ],
    ids=["assert-true", "remove-test", "delete-file"],
)  # fmt: skip
async def test_a_repair_that_edits_the_parents_test_is_rejected_with_the_rule_named(
    tmp_path: Path, nats_server: EmbeddedNats, fake: FakeGemini, cheat: Reply, rule: str
) -> None:
    async with repair_stack(tmp_path, nats_server, fake) as stack:
        v1 = await passing_parent(stack, fake)
        status, events = await iterate(stack, fake, v1["generation_id"], cheat)
        v2 = status["generation_id"]
        test_file = await stack.alice.get(f"/generations/{v2}/files/tests/test_status.py")
        diff = (await stack.alice.get(f"/generations/{v2}/diff")).json()

    assert status["status"] == "completed", "the files are kept and downloadable"
    assert story(events) == ["verify:failed", "repair:rejected"]
    [retry] = [e for e in of(events, "llm.retrying") if e["phase"] == "repair"]
    assert retry["reason"] == "guard_rejected" and "tests/test_status.py" in retry["message"]
    assert len(fake.calls_for("repair")) == 2, "one corrective retry"
    [completed] = of(events, "repair.completed")
    assert completed["outcome"] == "rejected"
    assert completed["rules"] == [rule] and rule in completed["reason"]
    assert completed["files_changed"] == [] and completed["deleted"] == []
    assert status["verification"]["headline"] == (
        f"failed: 1 test still failing after 1 round (round 1 rejected: {rule})"
    )
    # The parent's test stands as it was, and no file is marked as repaired.
    assert test_file.text == V1_TESTS
    assert all(f["repair_rounds"] == [] for f in diff["files"])
