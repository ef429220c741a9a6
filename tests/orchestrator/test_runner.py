"""The runner against a real nats-server: the order of events, resuming after a crash,
standing back for another writer, the corrective retry, cancelling."""

from __future__ import annotations

import asyncio
import logging

import nats
import pytest
from nats.js import JetStreamContext

from contracts import streams
from contracts.codec import content_sha256
from contracts.commands import GenerateRequested
from contracts.events import PhaseStarted, utc_now
from contracts.phases import PHASE_NAMES, GeneratedFile, PhaseOutput
from contracts.state import fold
from services.common.broker import ensure_streams
from services.common.consumer import Ack, Retry
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.settings import load_settings
from services.orchestrator.cancels import CancelWatcher
from services.orchestrator.providers.base import PhaseRequest, ProviderError, Reporter
from services.orchestrator.providers.registry import Providers
from services.orchestrator.runner import GenerationRunner, RunnerConfig
from services.orchestrator.verification import VerifierClient
from tests.orchestrator.helpers import requested_generation
from tests.support.waiting import eventually


class Scripted:
    """Two files per phase, deterministic; hooks let a test break a phase."""

    name = "offline"
    instant = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []
        self.bad_attempts: dict[str, int] = {}
        self.block_in: str | None = None

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        self.calls.append((request.phase, request.attempt, request.correction))
        if request.phase == self.block_in:
            await asyncio.Event().wait()
        if request.phase == "verify":
            return PhaseOutput(summary="verified")
        files = [
            GeneratedFile(f"{request.phase}/a.py", f"# {request.phase} a\nA = 1\n"),
            GeneratedFile(f"{request.phase}/b.py", f"# {request.phase} b\nB = 2\n"),
        ]
        if self.bad_attempts.get(request.phase, 0) >= request.attempt:
            files.append(GeneratedFile(f"{request.phase}/c.py", "# ... existing code ...\n"))
        return PhaseOutput(files=files, summary=f"{request.phase} done")


async def request_generation(js: JetStreamContext) -> GenerateRequested:
    writer = await requested_generation(js)
    return GenerateRequested(
        generation_id=writer.generation_id, project_id=writer.project_id, at=utc_now()
    )


async def make_runner(
    js: JetStreamContext, provider: Scripted, worker: str = "w1"
) -> GenerationRunner:
    providers = Providers(load_settings({}), {"offline": provider})
    cancels = CancelWatcher(js)
    await cancels.start()
    return GenerationRunner(
        js, providers, cancels, RunnerConfig(worker=worker, max_attempts=3, conflict_retry_s=1)
    )


async def types_of(js: JetStreamContext, generation_id: str) -> list[str]:
    return [type(e.event).__name__ for e in await read_generation(js, generation_id)]


async def test_a_run_publishes_every_step_in_order(js: JetStreamContext) -> None:
    command = await request_generation(js)
    outcome = await (await make_runner(js, Scripted())).run(command, attempt=1)

    assert outcome == Ack()
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))
    state = fold(e.event for e in history)
    assert state is not None and state.summary.status == "completed"
    assert state.summary.phases_completed == list(PHASE_NAMES)
    assert len(state.files) == 12
    assert all(e.event.prev_hash for e in history[1:])


async def test_a_finished_generation_is_acked_without_a_step(js: JetStreamContext) -> None:
    command = await request_generation(js)
    runner = await make_runner(js, Scripted())
    await runner.run(command, attempt=1)
    before = await types_of(js, command.generation_id)
    assert await runner.run(command, attempt=2) == Ack()
    assert await types_of(js, command.generation_id) == before


async def test_a_crash_mid_phase_resumes_without_redoing_finished_steps(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    first = Scripted()
    first.block_in = "api"
    crashed = asyncio.create_task((await make_runner(js, first)).run(command, attempt=1))

    async def blocked_in_api() -> bool:
        return bool(
            "PhaseStarted" in await types_of(js, command.generation_id)
            and first.calls
            and first.calls[-1][0] == "api"
        )

    await eventually(blocked_in_api, 10, 0.02, what="the first runner to block in api")
    crashed.cancel()  # the process dies
    await asyncio.gather(crashed, return_exceptions=True)
    before = await read_generation(js, command.generation_id)

    second = Scripted()
    assert await (await make_runner(js, second, worker="w2")).run(command, attempt=2) == Ack()

    history = await read_generation(js, command.generation_id)
    assert history[: len(before)] == before, "nothing already written is touched"
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))
    assert [c[0] for c in second.calls] == ["api", "tests", "docs", "verify"]
    resumed = [e.event for e in history if type(e.event).__name__ == "GenerationResumed"]
    assert len(resumed) == 1 and resumed[0].from_phase == "api"  # type: ignore[attr-defined]
    completed = [e.event.phase for e in history if type(e.event).__name__ == "PhaseCompleted"]  # type: ignore[attr-defined]
    assert completed == list(PHASE_NAMES)
    started = [e.event.phase for e in history if type(e.event).__name__ == "PhaseStarted"]  # type: ignore[attr-defined]
    assert started == list(PHASE_NAMES), "the interrupted phase is not announced twice"

    clean_command = await request_generation(js)
    await (await make_runner(js, Scripted())).run(clean_command, attempt=1)
    clean = fold(e.event for e in await read_generation(js, clean_command.generation_id))
    resumed_state = fold(e.event for e in history)
    assert clean is not None and resumed_state is not None
    assert resumed_state.file_contents() == clean.file_contents()


async def test_a_second_writer_is_refused_and_stands_back(js: JetStreamContext) -> None:
    command = await request_generation(js)
    slow = Scripted()
    slow.block_in = "models"
    first = asyncio.create_task((await make_runner(js, slow)).run(command, attempt=1))
    await eventually(lambda: ("models", 1, None) in slow.calls, 10, 0.02)

    outcome = await (await make_runner(js, Scripted(), worker="w2")).run(command, attempt=2)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)

    # The second runner wrote generation.resumed and ran on; the first, unblocked now,
    # would be refused. Here the first is blocked, so the second finishes the work:
    assert isinstance(outcome, Ack | Retry)
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))


async def test_two_runners_racing_never_interleave_events(js: JetStreamContext) -> None:
    command = await request_generation(js)
    outcomes = await asyncio.gather(
        (await make_runner(js, Scripted(), "w1")).run(command, attempt=1),
        (await make_runner(js, Scripted(), "w2")).run(command, attempt=1),
    )
    assert Ack() in outcomes
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))
    state = fold(e.event for e in history)
    assert state is not None and state.summary.status == "completed"
    assert [type(e.event).__name__ for e in history].count("GenerationCompleted") == 1


async def test_a_rejected_output_is_retried_once_with_a_correction(js: JetStreamContext) -> None:
    command = await request_generation(js)
    provider = Scripted()
    provider.bad_attempts["models"] = 1
    await (await make_runner(js, provider)).run(command, attempt=1)

    models_calls = [c for c in provider.calls if c[0] == "models"]
    assert [c[1] for c in models_calls] == [1, 2]
    assert models_calls[1][2] is not None and "models/c.py" in models_calls[1][2]
    state = fold(e.event for e in await read_generation(js, command.generation_id))
    assert state is not None and state.summary.status == "completed"
    assert "models/c.py" not in state.files


async def test_an_output_rejected_twice_fails_naming_the_file_and_rule(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    provider = Scripted()
    provider.bad_attempts["api"] = 2
    await (await make_runner(js, provider)).run(command, attempt=1)

    state = fold(e.event for e in await read_generation(js, command.generation_id))
    assert state is not None and state.summary.status == "failed"
    assert state.summary.error_phase == "api" and state.summary.error_kind == "guard"
    assert (
        state.summary.error is not None
        and "api/c.py" in state.summary.error
        and "placeholder" in state.summary.error
    )
    assert {p.split("/")[0] for p in state.files} == {"plan", "models", "schemas"}


async def test_a_provider_error_fails_the_generation_and_keeps_the_files(
    js: JetStreamContext,
) -> None:
    class Failing(Scripted):
        async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
            if request.phase == "schemas":
                raise ProviderError("no schemas today")
            return await super().run_phase(request, reporter)

    command = await request_generation(js)
    await (await make_runner(js, Failing())).run(command, attempt=1)
    state = fold(e.event for e in await read_generation(js, command.generation_id))
    assert state is not None and state.summary.status == "failed"
    assert state.summary.error == "no schemas today" and state.summary.error_phase == "schemas"
    assert len(state.files) == 4


async def test_a_file_already_written_with_the_same_content_is_not_written_again(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    writer = GenerationWriter.after(
        js, await read_generation(js, command.generation_id), source="test"
    )
    from contracts.events import FileWritten

    content = "# plan a\nA = 1\n"
    await writer.emit(
        FileWritten,
        path="plan/a.py",
        content=content,
        sha256=content_sha256(content),
        size=len(content),
        phase="plan",
    )
    await (await make_runner(js, Scripted())).run(command, attempt=2)
    paths = [
        e.event.path
        for e in await read_generation(js, command.generation_id)
        if isinstance(e.event, FileWritten)
    ]
    assert paths.count("plan/a.py") == 1


async def _batches(js: JetStreamContext, generation_id: str) -> list[list[str]]:
    """The generation's events (type names) grouped by the atomic batch each came in;
    an event appended alone is a group of one."""
    groups: list[list[str]] = []
    last_id: str | None = None
    for stored in await read_generation(js, generation_id):
        message = await js.get_msg(streams.EVENTS_STREAM, stored.stream_seq)
        batch_id = (message.headers or {}).get("Nats-Batch-Id")
        if batch_id is None or batch_id != last_id:
            groups.append([])
        groups[-1].append(type(stored.event).__name__)
        last_id = batch_id
    return groups


async def test_a_phases_files_and_its_completion_go_in_as_one_batch(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    assert await (await make_runner(js, Scripted())).run(command, attempt=1) == Ack()
    groups = await _batches(js, command.generation_id)
    phases = [g for g in groups if "PhaseCompleted" in g]
    assert len(phases) == len(PHASE_NAMES)
    # The next phase starts in the same batch: one append fewer per phase.
    assert phases[0] == ["FileWritten", "FileWritten", "PhaseCompleted", "PhaseStarted"]
    assert all(g[-2:] == ["PhaseCompleted", "PhaseStarted"] for g in phases[:-1])
    assert phases[-1] == ["PhaseCompleted"]  # verify writes no file; nothing follows it
    assert all(g.count("PhaseCompleted") <= 1 for g in groups)
    started = [e.event for e in await read_generation(js, command.generation_id)]
    assert [e.phase for e in started if isinstance(e, PhaseStarted)] == list(PHASE_NAMES)


async def test_without_atomic_batches_a_run_appends_one_event_at_a_time(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    await js.update_stream(streams.events_stream(atomic=False))  # an older cluster's stream
    try:
        command = await request_generation(js)
        assert await (await make_runner(js, Scripted())).run(command, attempt=1) == Ack()
        history = await read_generation(js, command.generation_id)
        state = fold(e.event for e in history)
        assert state is not None and state.summary.status == "completed"
        assert len(state.files) == 12
        assert all(len(g) == 1 for g in await _batches(js, command.generation_id))
    finally:
        await nc.close()


class Instant(Scripted):
    """A provider that answers at once, as the offline one without a phase delay."""

    instant = True


async def test_an_instant_providers_phases_go_in_as_one_batch_each_phase_whole(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    assert await (await make_runner(js, Instant())).run(command, attempt=1) == Ack()
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))
    state = fold(e.event for e in history)
    assert state is not None and state.summary.status == "completed"
    assert state.summary.phases_completed == list(PHASE_NAMES)
    assert len(state.files) == 12
    groups = await _batches(js, command.generation_id)
    one_phase = ["FileWritten", "FileWritten", "PhaseCompleted", "PhaseStarted"]
    # With no verifier (the runner's default: KILN_VERIFY=false) nothing reads the log
    # before the end: the start, every phase, verify's answer and the end in one batch.
    assert groups == [
        ["GenerationRequested"],
        ["GenerationStarted", "PhaseStarted"]
        + one_phase * 6
        + ["VerifyStarted", "VerifyUnavailable", "PhaseCompleted", "GenerationCompleted"],
    ]
    # The same events in the same order as a provider whose phases go in one by one.
    other = await request_generation(js)
    assert await (await make_runner(js, Scripted())).run(other, attempt=1) == Ack()
    assert await types_of(js, command.generation_id) == await types_of(js, other.generation_id)


async def test_phases_log_at_info_when_they_go_in_and_at_debug_when_held(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.orchestrator.runner")
    for provider in (Scripted(), Instant()):
        caplog.clear()
        command = await request_generation(js)
        assert await (await make_runner(js, provider)).run(command, attempt=1) == Ack()
        phases = [r for r in caplog.records if r.getMessage().startswith("Phase ")]
        assert len(phases) == len(PHASE_NAMES)
        levels = {r.levelno for r in phases}
        assert levels == ({logging.DEBUG} if provider.instant else {logging.INFO})
        info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert f"Generation {command.generation_id} started" in info
        assert f"Generation {command.generation_id} completed" in info


async def test_with_a_verifier_an_instant_providers_version_is_in_before_verify_starts(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    runner = await make_runner(js, Instant())
    runner.verifier = VerifierClient(js, pickup_s=0.2, wait_s=0.2)  # on, but none running
    assert await runner.run(command, attempt=1) == Ack()
    groups = await _batches(js, command.generation_id)
    one_phase = ["FileWritten", "FileWritten", "PhaseCompleted", "PhaseStarted"]
    # The verifier reads the log up to verify.started: the version is appended before it.
    assert groups == [
        ["GenerationRequested"],
        ["GenerationStarted", "PhaseStarted"] + one_phase * 6,
        ["VerifyStarted"],
        ["VerifyUnavailable"],
        ["PhaseCompleted", "GenerationCompleted"],
    ]


async def test_an_event_appended_while_a_batch_is_held_goes_in_after_it(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    provider = Instant()
    provider.bad_attempts = {"schemas": 1}  # rejected once: llm.retrying, in that phase
    assert await (await make_runner(js, provider)).run(command, attempt=1) == Ack()
    other = await request_generation(js)
    scripted = Scripted()
    scripted.bad_attempts = {"schemas": 1}
    assert await (await make_runner(js, scripted)).run(other, attempt=1) == Ack()
    assert await types_of(js, command.generation_id) == await types_of(js, other.generation_id)
    groups = await _batches(js, command.generation_id)
    retry = groups.index(["LlmRetrying"])
    assert groups[retry - 1][-1] == "PhaseStarted", "plan and models went in before it"
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))


async def test_held_phases_lost_in_a_crash_are_redone_by_the_resumed_run(
    js: JetStreamContext,
) -> None:
    command = await request_generation(js)
    first = Instant()
    first.block_in = "api"  # the start, plan, models and schemas are held, not appended
    crashed = asyncio.create_task((await make_runner(js, first)).run(command, attempt=1))
    await eventually(
        lambda: bool(first.calls and first.calls[-1][0] == "api"),
        10,
        0.02,
        what="the first runner to block in api",
    )
    crashed.cancel()  # the process dies
    await asyncio.gather(crashed, return_exceptions=True)
    assert await types_of(js, command.generation_id) == ["GenerationRequested"]
    second = Instant()
    assert await (await make_runner(js, second, worker="w2")).run(command, attempt=2) == Ack()
    assert [c[0] for c in second.calls] == list(PHASE_NAMES)
    history = await read_generation(js, command.generation_id)
    assert [e.event.seq for e in history] == list(range(1, len(history) + 1))
    state = fold(e.event for e in history)
    assert state is not None and state.summary.status == "completed"
    assert state.summary.phases_completed == list(PHASE_NAMES)
    assert len(state.files) == 12
    assert "GenerationResumed" not in await types_of(js, command.generation_id)
