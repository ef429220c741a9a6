"""Runs one generation: from its log so far to a terminal event.

The runner is restartable at any point. It rebuilds the generation by folding its subject,
announces itself (`generation.started`, or `generation.resumed` after a crash), and runs
each phase that has no `phase.completed` yet; within a phase, files already published with
the same content are not published again. Every append is guarded by the subject's last
sequence, so a second runner on the same generation is refused by the stream and stops.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from contracts.codec import content_sha256
from contracts.commands import GenerateRequested
from contracts.events import (
    FileDeleted,
    FileWritten,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationResumed,
    GenerationStarted,
    PhaseCompleted,
    PhaseStarted,
    RepairCompleted,
    RepairReverted,
    RepairStarted,
    utc_now,
)
from contracts.phases import PHASES, PhaseOutput, PhasePlan, progress_before
from contracts.state import GenerationState, apply, fold
from services.common import metrics
from services.common.consumer import Ack, DeadLetter, Outcome, Retry
from services.common.eventlog import StoredEvent, read_generation
from services.common.eventwriter import (
    EventBatch,
    GenerationWriter,
    LogUnavailable,
    WriterConflict,
    source_uri,
)
from services.common.logs import get_logger, redactor
from services.orchestrator.cancels import CancelWatcher
from services.orchestrator.cheats import check_repair
from services.orchestrator.guard import (
    Violation,
    check_output,
    correction_for,
    missing_parent_files,
    rejection_message,
)
from services.orchestrator.providers.base import (
    PhaseRequest,
    Provider,
    ProviderError,
    RepairBrief,
)
from services.orchestrator.providers.registry import Providers
from services.orchestrator.repairs import (
    REPAIR_PROGRESS,
    Done,
    Repair,
    Revert,
    Verify,
    before_round,
    failing,
    files_named,
    next_step,
    restored,
)
from services.orchestrator.reporter import EventReporter
from services.orchestrator.verification import VerifierClient, verify_step
from services.orchestrator.verify import compile_errors
from services.orchestrator.watchdog import Heartbeats

log = get_logger(__name__)


class Cancelled(Exception):
    """The generation was cancelled while a step ran."""


@dataclass
class RunnerConfig:
    """What a runner needs besides the generation: its identity and its limits."""

    worker: str
    max_attempts: int
    conflict_retry_s: float = 30.0
    heartbeat_s: float = 5.0
    repair_rounds: int = 2


class FoldingWriter(GenerationWriter):
    """A generation's writer that folds every event it appends into `state`.

    So the runner's state is always the fold of the log as written, events of the
    providers' reports included: nothing about the version is updated by hand.
    """

    def __init__(self, *args: Any, state: GenerationState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state

    def appended(self, stored: StoredEvent) -> None:
        """Apply each event the stream took (alone or in a batch) to `state`."""
        apply(self.state, stored.event)


class GenerationRunner:
    """Takes generate commands and drives each generation to its end."""

    def __init__(
        self,
        js: JetStreamContext,
        providers: Providers,
        cancels: CancelWatcher,
        config: RunnerConfig,
        heartbeats: Heartbeats | None = None,
        verifier: VerifierClient | None = None,
    ) -> None:
        self.js = js
        self.providers = providers
        self.cancels = cancels
        self.config = config
        self.heartbeats = heartbeats
        self.verifier = verifier or VerifierClient(js, pickup_s=0, wait_s=0, enabled=False)

    async def run(self, command: GenerateRequested, attempt: int) -> Outcome:
        """Run (or resume) the command's generation; the outcome for its message."""
        generation_id = command.generation_id
        history = await read_generation(self.js, generation_id)
        if not history or not isinstance(history[0].event, GenerationRequested):
            return DeadLetter(f"generation {generation_id} has no generation.requested event")
        state = fold(e.event for e in history)
        assert state is not None
        if state.is_terminal:
            log.info(
                "Generation {generation_id} is already {status}; nothing to do",
                generation_id=generation_id,
                status=state.summary.status,
            )
            self.cancels.forget(generation_id)
            return Ack()
        writer = FoldingWriter.after(
            self.js, history, source=source_uri("orchestrator", self.config.worker), state=state
        )
        cancelled = await self.cancels.check(generation_id)
        run = _Run(self, state, writer, cancelled, attempt)
        metrics.generations_running.inc()
        beating = (
            asyncio.create_task(
                self.heartbeats.keep_beating(generation_id, self.config.heartbeat_s)
            )
            if self.heartbeats
            else None
        )
        try:
            await run.execute()
        except WriterConflict:
            log.warning(
                "Another orchestrator is writing generation {generation_id}; standing back",
                generation_id=generation_id,
            )
            return Retry(
                "another orchestrator is writing this generation", self.config.conflict_retry_s
            )
        except LogUnavailable as exc:
            return Retry(str(exc))
        except asyncio.CancelledError:
            log.info(
                "Generation {generation_id} interrupted by a shutdown; another orchestrator "
                "resumes it",
                generation_id=generation_id,
                phase=run.phase,
            )
            raise
        except Exception as exc:
            if attempt < self.config.max_attempts:
                log.exception(
                    "Generation {generation_id} hit an internal error; it will be retried",
                    generation_id=generation_id,
                    attempt=attempt,
                )
                return Retry(f"internal error: {exc!r}")
            log.exception(
                "Generation {generation_id} hit an internal error on its last attempt",
                generation_id=generation_id,
                attempt=attempt,
            )
            await run.fail(
                ProviderError(
                    f"Kiln hit an internal error ({type(exc).__name__}) and gave up after "
                    f"{attempt} attempts; the files written so far are kept.",
                    kind="provider",
                    retryable=True,
                ),
                error_kind="internal",
            )
        finally:
            metrics.generations_running.dec()
            if beating is not None:
                beating.cancel()
        self.cancels.forget(generation_id)
        if self.heartbeats is not None:
            await self.heartbeats.clear(generation_id)
        return Ack()


class _Run:
    """One attempt at one generation."""

    def __init__(
        self,
        runner: GenerationRunner,
        state: GenerationState,
        writer: GenerationWriter,
        cancelled: asyncio.Event,
        attempt: int,
    ) -> None:
        self.runner = runner
        self.state = state
        self.writer = writer
        self.cancelled = cancelled
        self.attempt = attempt
        self.phase: str | None = state.summary.phase
        self.parent_files: dict[str, str] = {}
        self.parent_passed = False
        request = state.request
        assert request is not None
        self.request = request
        self.generation_id = state.generation_id

    async def execute(self) -> None:
        try:
            if self.cancelled.is_set():
                raise Cancelled
            await self._announce()
            provider = self.runner.providers.get(self.request.provider)
            if self.request.kind == "iterate":
                self.parent_files = await self._parent_files()
            for plan in PHASES:
                if plan.name in self.state.summary.phases_completed:
                    continue
                await self._phase(plan, provider)
            await self._complete()
        except Cancelled:
            await self._cancelled()
        except ProviderError as exc:
            await self.fail(exc)

    async def _announce(self) -> None:
        if self.state.summary.started_at is None:
            await self.writer.emit(
                GenerationStarted,
                plan=list(PHASES),
                worker=self.runner.config.worker,
                provider=self.request.provider,
                model=self.request.model,
                progress=0,
            )
            log.info(
                "Generation {generation_id} started",
                generation_id=self.generation_id,
                provider=self.request.provider,
                kind=self.request.kind,
                version=self.request.version,
            )
        else:
            next_phase = next(
                (p.name for p in PHASES if p.name not in self.state.summary.phases_completed),
                "verify",
            )
            await self.writer.emit(
                GenerationResumed,
                worker=self.runner.config.worker,
                attempt=self.attempt,
                from_phase=next_phase,
            )
            log.info(
                "Generation {generation_id} resumed at phase {phase}",
                generation_id=self.generation_id,
                phase=next_phase,
                attempt=self.attempt,
            )

    async def _parent_files(self) -> dict[str, str]:
        parent_id = self.request.parent_generation_id
        assert parent_id is not None
        parent = fold(e.event for e in await read_generation(self.runner.js, parent_id))
        if parent is None or parent.summary.status != "completed":
            raise ProviderError(
                f"the parent generation {parent_id} is not a completed version",
                kind="provider",
            )
        self.parent_passed = (
            parent.summary.verification is not None
            and parent.summary.verification.status == "passed"
        )
        return parent.file_contents()

    async def _phase(self, plan: PhasePlan, provider: Provider) -> None:
        self.phase = plan.name
        if self.cancelled.is_set():
            raise Cancelled
        if plan.name not in self.state.summary.phases_started:
            await self.writer.emit(
                PhaseStarted, phase=plan.name, title=plan.title, progress=progress_before(plan.name)
            )
        started = time.monotonic()
        if plan.name == "plan" and self.request.kind == "iterate":
            await self._carry_parent_files()
        output = await self._produce(plan, provider)
        if self.cancelled.is_set():
            raise Cancelled
        # The phase's files, deletions and phase.completed go in as one atomic batch: after
        # a crash the log holds all of the phase or none of it.
        batch = self.writer.batch()
        self._apply(plan, output, batch)
        staged = {e.path for e in batch.events if isinstance(e, FileWritten)}
        files = self.state.files
        written = sorted(
            f.path
            for f in output.files
            if f.path in staged
            or (
                f.path in files
                and files[f.path].phase == plan.name
                and files[f.path].origin == "generated"
            )
        )
        if plan.name == "verify":
            # The version is whole: its last files go in, then its own tests run.
            await batch.append()
            await self._verify_and_repair(provider)
            batch = self.writer.batch()
        batch.add(
            PhaseCompleted,
            phase=plan.name,
            files=written,
            deleted=sorted(d.path for d in output.deletions),
            summary=output.summary,
            duration_ms=int((time.monotonic() - started) * 1000),
            progress=plan.progress,
        )
        await batch.append()
        metrics.phase_seconds.labels(plan.name, self.request.provider).observe(
            time.monotonic() - started
        )
        log.info(
            "Phase {phase} of generation {generation_id} completed",
            phase=plan.name,
            generation_id=self.generation_id,
            files=len(written),
            progress=plan.progress,
        )

    async def _verify_and_repair(self, provider: Provider) -> None:
        """Verify the version; while an LLM version's tests fail, repair and verify again.

        Each step is decided from the log's fold alone, so a resumed generation continues
        at the unfinished step and never repeats a finished one.
        """
        rounds = self.runner.config.repair_rounds
        repairable = bool(getattr(provider, "repairs", False)) and rounds > 0
        while True:
            step = next_step(self.state.summary.verification, rounds=rounds, repairable=repairable)
            match step:
                case Done():
                    return
                case Verify(round=round_, started=started):
                    await self._verify_version(round_, started)
                case Repair(round=round_, started=started):
                    await self._repair(provider, round_, started, rounds)
                case Revert(round=round_):
                    await self._revert(round_)

    async def _verify_version(self, round_: int, started: bool) -> None:
        """One round of the version's own tests, run by a verifier; abandoned when it is
        cancelled."""
        step = asyncio.ensure_future(
            verify_step(self.writer, self.runner.verifier, round_, done=False, started=started)
        )
        cancel = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait({step, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if not step.done():
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
            raise Cancelled
        step.result()

    async def _repair(self, provider: Provider, round_: int, started: bool, rounds: int) -> None:
        """Repair round `round_`: the failing tests go to the model; its checked changes
        and repair.completed are appended as one batch."""
        v = self.state.summary.verification
        assert v is not None
        if self.cancelled.is_set():
            raise Cancelled
        if not started:
            await self.writer.emit(
                RepairStarted,
                round=round_,
                failing=[f.test_id for f in v.failures],
                failing_count=failing(v),
                progress=REPAIR_PROGRESS,
            )
        log.info(
            "Repair round {round} of generation {generation_id} started",
            round=round_,
            generation_id=self.generation_id,
            failing=failing(v),
            resumed=started,
        )
        brief = RepairBrief(
            round=round_,
            rounds=max(rounds, round_),
            failed=v.failed,
            errors=v.errors,
            failures=list(v.failures),
            compile_errors=list(v.compile_errors),
            files=files_named(v, self.state.file_contents()),
            parent_passed=self.parent_passed,
        )
        output, rules, reason = await self._produce_repair(provider, brief)
        batch = self.writer.batch()
        if output is not None:
            self._apply_repair(output, batch)
        written = sorted({e.path for e in batch.events if isinstance(e, FileWritten)})
        deleted = sorted({e.path for e in batch.events if isinstance(e, FileDeleted)})
        outcome = "changed" if written or deleted else "unchanged" if output is not None else None
        batch.add(
            RepairCompleted,
            round=round_,
            files_changed=written,
            deleted=deleted,
            outcome=outcome or ("rejected" if rules else "failed"),
            rules=rules,
            reason=reason,
            summary=output.summary if output is not None else "",
            progress=REPAIR_PROGRESS,
        )
        await batch.append()
        log.info(
            "Repair round {round} of generation {generation_id}: {outcome}",
            round=round_,
            generation_id=self.generation_id,
            outcome=outcome or ("rejected" if rules else "failed"),
            files=len(written) + len(deleted),
            reason=reason,
        )

    async def _produce_repair(
        self, provider: Provider, brief: RepairBrief
    ) -> tuple[PhaseOutput | None, list[str], str]:
        """The checked repair, or None with the rules it broke (twice) or why the model
        could not answer."""
        correction: str | None = None
        locked = frozenset(self.request.locked_paths)
        for attempt in (1, 2):
            reporter = EventReporter(self.writer, "repair", REPAIR_PROGRESS, self.cancelled)
            current = self.state.file_contents()
            request = PhaseRequest(
                generation_id=self.generation_id,
                project_name=self.request.project_name,
                phase="repair",
                plan=list(PHASES),
                kind=self.request.kind,
                prompt=self.request.prompt,
                schema=self.request.schema,
                files=current,
                parent_files=self.parent_files,
                locked_paths=list(self.request.locked_paths),
                model=self.request.model,
                correction=correction,
                attempt=attempt,
                repair=brief,
            )
            try:
                output = await self._call(provider, request, reporter)
            except ProviderError as exc:
                return None, [], redactor(exc.message)
            checked, violations = check_output(output, current=current, locked=locked)
            cheats = check_repair(output, current=current)
            cheated = {v.path for v in cheats}
            violations = cheats + [
                v for v in violations if not (v.rule == "dropped" and v.path in cheated)
            ]
            if not violations:
                return checked, [], ""
            problems = "; ".join(v.describe() for v in violations[:10])
            log.warning(
                "Repair round {round} of generation {generation_id} rejected",
                round=brief.round,
                generation_id=self.generation_id,
                attempt=attempt,
                problems=problems,
            )
            if attempt == 2:
                rules = sorted({v.rule for v in violations})
                return None, rules, rejection_message("repair", violations)
            correction = correction_for("repair", violations)
            await reporter.retrying(
                reason="guard_rejected", delay_s=0.0, attempt=2, message=problems
            )
        raise AssertionError("unreachable")

    def _apply_repair(self, output: PhaseOutput, batch: EventBatch) -> None:
        for file in output.files:
            if self._content(file.path) != file.content:
                self._write(batch, file.path, file.content, "repair", "generated", REPAIR_PROGRESS)
        for deletion in output.deletions:
            if deletion.path in self.state.files:
                batch.add(FileDeleted, path=deletion.path, reason=deletion.reason, phase="repair")

    async def _revert(self, round_: int) -> None:
        """Put back what repair round `round_` changed, and its verification before it."""
        history = [e.event for e in await read_generation(self.runner.js, self.generation_id)]
        before = before_round(history, round_)
        v = before.summary.verification if before is not None else None
        assert before is not None and v is not None, "a reverted round has a repair.started"
        changed = (
            next(
                (
                    r.files_changed
                    for r in self.state.summary.verification.repairs
                    if r.round == round_
                ),
                [],
            )
            if self.state.summary.verification is not None
            else []
        )
        batch = self.writer.batch()
        for path in changed:
            old = before.files.get(path)
            if old is not None and old.content is not None:
                if self._content(path) != old.content:
                    self._write(batch, path, old.content, "repair", old.origin, REPAIR_PROGRESS)
            elif path in self.state.files:
                batch.add(
                    FileDeleted,
                    path=path,
                    reason=f"added by repair round {round_}, which was reverted",
                    phase="repair",
                )
        now = self.state.summary.verification
        reason = (
            f"it made things worse: {failing(now) if now else '?'} tests failing instead of "
            f"{failing(v)}; its files were put back"
        )
        batch.add(
            RepairReverted,
            round=round_,
            files=changed,
            reason=reason,
            restored=restored(v),
            progress=REPAIR_PROGRESS,
        )
        await batch.append()
        log.warning(
            "Repair round {round} of generation {generation_id} reverted",
            round=round_,
            generation_id=self.generation_id,
            reason=reason,
        )

    async def _carry_parent_files(self) -> None:
        """Start the new version from the parent's files, each an event of this log,
        appended as one atomic batch before the provider sees them."""
        batch = self.writer.batch()
        for path in sorted(self.parent_files):
            content = self.parent_files[path]
            if path in self.state.deleted or self._content(path) == content:
                continue
            self._write(batch, path, content, "plan", "parent", progress_before("plan"))
        await batch.append()

    async def _produce(self, plan: PhasePlan, provider: Provider) -> PhaseOutput:
        """The provider's output for a phase, checked; one corrective retry when rejected."""
        correction: str | None = None
        locked = frozenset(self.request.locked_paths)
        for attempt in (1, 2):
            reporter = EventReporter(
                self.writer, plan.name, progress_before(plan.name), self.cancelled
            )
            request = PhaseRequest(
                generation_id=self.generation_id,
                project_name=self.request.project_name,
                phase=plan.name,
                plan=list(PHASES),
                kind=self.request.kind,
                prompt=self.request.prompt,
                schema=self.request.schema,
                files=self.state.file_contents(),
                parent_files=self.parent_files,
                locked_paths=list(self.request.locked_paths),
                model=self.request.model,
                correction=correction,
                attempt=attempt,
            )
            output = await self._call(provider, request, reporter)
            checked, violations = check_output(
                output, current=self.state.file_contents(), locked=locked
            )
            if plan.name == "verify" and not violations:
                violations = self._syntax_violations(checked)
            if not violations:
                return checked
            log.warning(
                "Output of phase {phase} of generation {generation_id} rejected",
                phase=plan.name,
                generation_id=self.generation_id,
                attempt=attempt,
                problems="; ".join(v.describe() for v in violations[:5]),
            )
            if attempt == 2:
                only_syntax = {v.rule for v in violations} == {"syntax"}
                raise ProviderError(
                    rejection_message(plan.name, violations),
                    kind="invalid_output" if only_syntax else "guard",
                )
            correction = correction_for(plan.name, violations)
            await reporter.retrying(
                reason="guard_rejected",
                delay_s=0.0,
                attempt=2,
                message="; ".join(v.describe() for v in violations[:10]),
            )
        raise AssertionError("unreachable")

    def _syntax_violations(self, output: PhaseOutput) -> list[Violation]:
        after = self.state.file_contents()
        after.update({f.path: f.content for f in output.files})
        for d in output.deletions:
            after.pop(d.path, None)
        return [
            Violation(error.split(":", 1)[0], "syntax", f"does not compile: {error}")
            for error in compile_errors(after)
        ]

    async def _call(
        self, provider: Provider, request: PhaseRequest, reporter: EventReporter
    ) -> PhaseOutput:
        """Run the provider, abandoning the call as soon as the generation is cancelled."""
        call = asyncio.ensure_future(provider.run_phase(request, reporter))
        cancel = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait({call, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            raise Cancelled
        try:
            return call.result()
        except ProviderError as exc:
            if exc.kind == "cancelled":
                raise Cancelled from None
            raise
        except (WriterConflict, LogUnavailable):
            raise
        except Exception as exc:
            log.exception(
                "Provider {provider} failed in phase {phase} of generation {generation_id}",
                provider=provider.name,
                phase=request.phase,
                generation_id=self.generation_id,
            )
            raise ProviderError(
                f"the {provider.name} provider failed unexpectedly: {type(exc).__name__}: {exc}",
                retryable=True,
            ) from None

    def _apply(self, plan: PhasePlan, output: PhaseOutput, batch: EventBatch) -> None:
        """Add the phase's files and deletions to `batch`, skipping what the log already
        has (the guard has made sure no path is written twice, or written and deleted)."""
        before, target = progress_before(plan.name), plan.progress
        count = len(output.files)
        for index, file in enumerate(output.files):
            if self._content(file.path) == file.content:
                continue
            progress = before + (target - before) * (index + 1) // (count + 1)
            self._write(batch, file.path, file.content, plan.name, "generated", progress)
        for deletion in output.deletions:
            if deletion.path not in self.state.files:
                continue
            batch.add(FileDeleted, path=deletion.path, reason=deletion.reason, phase=plan.name)

    def _content(self, path: str) -> str | None:
        """The content of a file of the version so far (None if it has none)."""
        file = self.state.files.get(path)
        return None if file is None else file.content

    def _write(
        self, batch: EventBatch, path: str, content: str, phase: str, origin: str, progress: int
    ) -> None:
        batch.add(
            FileWritten,
            path=path,
            content=content,
            sha256=content_sha256(content),
            size=len(content.encode()),
            phase=phase,
            origin=origin,
            progress=progress,
        )

    async def _complete(self) -> None:
        missing = missing_parent_files(
            self.parent_files, self.state.file_contents(), set(self.state.deleted)
        )
        if missing:
            raise RuntimeError(f"parent files lost without a deletion: {missing[:10]}")
        summary = self.state.summary
        started = summary.started_at or summary.created_at or utc_now()
        duration_ms = int((utc_now() - started).total_seconds() * 1000)
        file_count, total_bytes = summary.file_count, summary.total_bytes
        await self.writer.emit(
            GenerationCompleted,
            file_count=file_count,
            total_bytes=total_bytes,
            duration_ms=duration_ms,
            progress=100,
        )
        metrics.generations_finished.labels("completed").inc()
        log.info(
            "Generation {generation_id} completed",
            generation_id=self.generation_id,
            files=file_count,
            bytes=total_bytes,
            duration_ms=duration_ms,
        )

    async def _cancelled(self) -> None:
        request = self.runner.cancels.request(self.generation_id)
        await self.writer.emit(
            GenerationCancelled,
            by=request.by if request else "owner",
            reason=request.reason if request and request.reason else "cancelled by its owner",
            phase=self.phase,
            files_kept=self.state.summary.file_count,
        )
        metrics.generations_finished.labels("cancelled").inc()
        log.info(
            "Generation {generation_id} cancelled",
            generation_id=self.generation_id,
            phase=self.phase,
            files_kept=self.state.summary.file_count,
        )

    async def fail(self, error: ProviderError, *, error_kind: str | None = None) -> None:
        """Publish `generation.failed` for this generation; its files so far stay."""
        message = redactor(error.message)
        await self.writer.emit(
            GenerationFailed,
            phase=self.phase,
            message=message,
            retryable=error.retryable,
            error_kind=error_kind or error.kind,
            files_kept=self.state.summary.file_count,
        )
        metrics.generations_finished.labels("failed").inc()
        metrics.failures.labels(error_kind or error.kind).inc()
        log.warning(
            "Generation {generation_id} failed in phase {phase}: {message}",
            generation_id=self.generation_id,
            phase=self.phase,
            message=message,
            kind=error_kind or error.kind,
        )
