"""The `verification` column of `generations`: written by the projector from verify.started,
verify.completed and verify.unavailable, and read back by the read model (a generation's view
and a project's versions, what `GET /projects/{id}` shows), on SQLite and on PostgreSQL.

The suites that run on one database only (tests marked `one_database`) rely on this test."""

from __future__ import annotations

from nats.js import JetStreamContext

from contracts.events import (
    FailedTest,
    GenerationCompleted,
    VerifyCompleted,
    VerifyStarted,
    VerifyUnavailable,
)
from contracts.state import Verification, fold
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.storage.queries import ReadModel
from tests.storage.conftest import publish_generation, running_storage, wait_applied

FILES = {"app/calc.py": "def add(a, b):\n    return a + b\n", "tests/test_calc.py": "x = 1\n"}
FAILURE = FailedTest(
    test_id="tests/test_calc.py::test_add",
    # Not ASCII, quoted, multi-line: stored as JSON on both databases.
    message="AssertionError: \"5\" ≠ '6'\nassert add(2, 3) == 6",
)


async def _folded(js: JetStreamContext, writer: GenerationWriter) -> Verification | None:
    """What the fold of the generation's own log says its verification is."""
    state = fold(e.event for e in await read_generation(js, writer.generation_id))
    assert state is not None
    return state.summary.verification


async def test_the_verification_is_stored_and_read_back_on_every_database(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    v1 = await publish_generation(js, FILES, complete=False)
    await v1.emit(VerifyStarted, round=0)
    v2 = await publish_generation(
        js, FILES, project_id=v1.project_id, version=2, parent=v1.generation_id, complete=False
    )
    await v2.emit(VerifyStarted, round=0)
    await v2.emit(VerifyUnavailable, round=0, reason="unverified: needs pandas")
    await v2.emit(GenerationCompleted, file_count=2, total_bytes=40, duration_ms=30)
    async with running_storage(storage_settings):
        await wait_applied(read_model, v2.last_stream_seq)

    running = await read_model.generation(v1.generation_id)
    assert running is not None and running.verification is not None
    assert (running.verification.status, running.verification.round) == ("running", 0)

    # The rest of v1 to a new storage service: applied to the row read back, not to memory.
    await v1.emit(
        VerifyCompleted,
        round=0,
        verdict="failed",
        passed=19,
        failed=1,
        skipped=2,
        duration_ms=1234,
        lint_findings=3,
        format_findings=1,
        compile_errors=["app/broken.py:1: invalid syntax"],
        failures=[FAILURE],
        verifier="host:42",
    )
    await v1.emit(GenerationCompleted, file_count=2, total_bytes=40, duration_ms=40)
    async with running_storage(storage_settings):
        await wait_applied(read_model, v1.last_stream_seq)

    failed = await read_model.generation(v1.generation_id)
    assert failed is not None and failed.verification is not None
    v = failed.verification
    assert (v.status, v.passed, v.failed, v.errors, v.skipped) == ("failed", 19, 1, 0, 2)
    assert (v.lint_findings, v.format_findings, v.duration_ms) == (3, 1, 1234)
    assert v.compile_errors == ["app/broken.py:1: invalid syntax"]
    assert v.failures == [FAILURE]
    assert v.headline
    assert v == await _folded(js, v1)

    unverified = await read_model.generation(v2.generation_id)
    assert unverified is not None and unverified.verification is not None
    assert unverified.verification.status == "unverified"
    assert unverified.verification.reason == "unverified: needs pandas"
    assert unverified.verification == await _folded(js, v2)

    # A project's versions carry the same, as GET /projects/{id} shows them.
    project = await read_model.project(v1.project_id)
    assert project is not None
    assert [version.verification for version in project.versions] == [
        failed.verification,
        unverified.verification,
    ]
    [listed] = [p for p in await read_model.projects("alice") if p.project_id == v1.project_id]
    assert [version.verification for version in listed.versions] == [
        failed.verification,
        unverified.verification,
    ]
