"""Every completed version says whether its own tests passed, measured by Kiln in a sandbox:
through the whole stack, with a real verifier, the real bubblewrap and the verify runtime."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest

from services.common.settings import Settings
from services.verifier.reports import parse_junit
from services.verifier.runtime import load_runtime
from tests.orchestrator.providers.offline.helpers import SHOP, every_type
from tests.support.stack import running_stack, schema_with

# A sandboxed run of a project's tests proves the same on either database: the
# `verification` column is stored and read back on SQLite and PostgreSQL by
# tests/storage/test_verification.py (and by test_rows.py's fold table).
pytestmark = [pytest.mark.timeout(600), pytest.mark.one_database]


def _verify_events(events: list) -> list[tuple[str, dict]]:
    return [(e.type, e.data) for e in events if e.type.startswith("verify.")]


async def test_a_20_entity_project_is_verified_with_the_counts_of_pytest_outside(
    settings: Settings, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(settings, verify_pickup_s=30.0)
    async with running_stack(settings, verifier=True) as stack:
        accepted = await stack.create(schema_with(20), project_name="twenty")
        events = await stack.events(accepted["stream_url"], timeout=240)
        status = await stack.wait_status(accepted["generation_id"], "completed")
        archive = await stack.alice.get(f"/generations/{accepted['generation_id']}/archive")
        project = (await stack.alice.get(f"/projects/{accepted['project_id']}")).json()
        # The CLI shows it too (`watch` replays the whole stream).
        key = stack.alice.headers["Authorization"].split()[1]
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", "watch", accepted["generation_id"],
             "--url", stack.url, "--api-key", key],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    verify = _verify_events(events)
    assert [t for t, _ in verify] == ["verify.started", "verify.completed"], verify
    completed = verify[1][1]
    assert completed["verdict"] == "passed", msgspec.json.encode(completed).decode()
    assert completed["failed"] == completed["errors"] == 0
    assert completed["compile_errors"] == []
    assert completed["lint_findings"] == completed["format_findings"] == 0
    # The verification sits between the docs phase and the end; progress never goes back.
    progress = [e.data.get("progress") for e in events if e.data.get("progress") is not None]
    assert progress == sorted(progress)
    assert 95 < verify[0][1]["progress"] < 100

    verification = status["verification"]
    assert verification["status"] == "passed"
    assert verification["passed"] == completed["passed"] >= 20 * 5
    assert project["versions"][0]["verification"]["status"] == "passed"

    assert shown.returncode == 0, shown.stderr
    assert f"PASSED: tests: {completed['passed']} passed · lint: clean" in shown.stdout

    # The same pytest on the downloaded zip, outside Kiln, counts the same.
    outside = tmp_path / "outside"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        zipped.extractall(outside)
    junit = tmp_path / "junit.xml"
    runtime = load_runtime(settings.verify_runtime)
    run = await asyncio.create_subprocess_exec(
        str(runtime.python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}",
        cwd=outside,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await run.wait() == 0
    counts = parse_junit(junit.read_bytes())
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (
        completed["passed"],
        completed["failed"],
        completed["errors"],
        completed["skipped"],
    )


async def test_without_a_verifier_a_version_is_unverified_and_says_why(
    settings: Settings,
) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create()
        events = await stack.events(accepted["stream_url"])
        status = await stack.wait_status(accepted["generation_id"], "completed")
    verify = _verify_events(events)
    assert [t for t, _ in verify] == ["verify.started", "verify.unavailable"]
    assert "no verifier is running" in verify[1][1]["reason"]
    assert status["verification"]["status"] == "unverified"
    assert "kiln verifier" in status["verification"]["reason"]


async def test_add_tests_adds_passing_tests_and_the_count_goes_up(settings: Settings) -> None:
    """Issue #15, item 5: the offline provider's "add tests" iteration, verified for real."""
    document = {"entities": [*SHOP["entities"], *every_type(2)["entities"]]}
    settings = msgspec.structs.replace(settings, verify_pickup_s=30.0)
    async with running_stack(settings, verifier=True) as stack:
        parent = await stack.create(document, project_name="tested")
        parent_events = await stack.events(parent["stream_url"], timeout=240)
        await stack.wait_status(parent["generation_id"], "completed")
        child = await stack.iterate(parent["generation_id"], "add tests")
        child_events = await stack.events(child["stream_url"], timeout=240)
        status = await stack.wait_status(child["generation_id"], "completed")
        diff = (await stack.alice.get(f"/generations/{child['generation_id']}/diff")).json()

    before = _verify_events(parent_events)[-1][1]
    after = _verify_events(child_events)[-1][1]
    for completed in (before, after):
        assert completed["verdict"] == "passed", msgspec.json.encode(completed).decode()
        assert completed["failed"] == completed["errors"] == 0
        assert completed["lint_findings"] == completed["format_findings"] == 0
    assert after["passed"] > before["passed"] + 60, (before["passed"], after["passed"])
    assert status["verification"]["passed"] == after["passed"]
    print(f"passed: parent {before['passed']}, after 'add tests' {after['passed']}")
    assert not [e for e in child_events if e.type == "file.deleted"]
    changed = {f["path"]: f["status"] for f in diff["files"]}
    tests_changed = {p: s for p, s in changed.items() if p.startswith("tests/")}
    assert tests_changed and set(tests_changed.values()) == {"added"}, tests_changed
    assert all(p.startswith("tests/edge_cases/") for p in tests_changed)
