"""Runs one generation: from its log so far to a terminal event.

The runner is restartable at any point. It rebuilds the generation by folding its subject,
announces itself (`generation.started`, or `generation.resumed` after a crash), and runs
each phase that has no `phase.completed` yet; within a phase, files already published with
the same content are not published again. Every append is guarded by the subject's last
sequence, so a second runner on the same generation is refused by the stream and stops.

Asking the provider for a phase and checking its answer is `producer.py`; verifying the
whole version and repairing it is `repair_loop.py`.

It stays one module of about 500 lines: `GenerationRunner` (taking the command, resuming,
the terminal events) and `_Run` (one run's phases, and the batch an instant provider's
phases are held in until verify) decide together which events go in which append; split
apart, the rule "a held batch goes in before any other append" would live in two places.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

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
    utc_now,
)
from contracts.phases import PHASES, PhaseOutput, PhasePlan, progress_before
from contracts.state import GenerationState, fold
from services.common import metrics
from services.common.blobs import BlobError, BlobStore, resolve_contents
from services.common.broker import (
    NOT_NOW_WAIT_S,
    BrokerUnavailable,
    says_not_now,
    when_available,
)
from services.common.consumer import Ack, DeadLetter, Outcome, Retry
from services.common.eventlog import read_generation
from services.common.eventwriter import (
    EventBatch,
    WriterConflict,
    source_uri,
)
from services.common.logs import get_logger, redactor
from services.orchestrator.cancels import Cancelled, CancelWatcher
from services.orchestrator.folding import FoldingWriter, add_file_written, file_content
from services.orchestrator.guard import missing_parent_files
from services.orchestrator.inheritance import name_parent_files, read_parent
from services.orchestrator.producer import PhaseProducer
from services.orchestrator.providers.base import Provider, ProviderError
from services.orchestrator.providers.registry import Providers
from services.orchestrator.repair_loop import RepairLoop
from services.orchestrator.verification import VerifierClient
from services.orchestrator.watchdog import Heartbeats

log = get_logger(__name__)

# A phase's batch is held for the next phase's (see `_Run._holds`) while it has fewer events
# than this: half of nats-server's default batch limit, so a held batch seldom splits.
HELD_EVENTS = 500


@dataclass
class RunnerConfig:
    """What a runner needs besides the generation: its identity and its limits."""

    worker: str
    max_attempts: int
    conflict_retry_s: float = 30.0
    heartbeat_s: float = 5.0
    repair_rounds: int = 2


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
        # A run waits out a leader election rather than failing an attempt on it.
        self.blobs = BlobStore(js, not_now_wait_s=NOT_NOW_WAIT_S)

    async def run(self, command: GenerateRequested, attempt: int) -> Outcome:
        """Run (or resume) the command's generation; the outcome for its message."""
        generation_id = command.generation_id
        try:
            history = await when_available(
                lambda: read_generation(self.js, generation_id),
                what=f"read generation {generation_id}",
            )
        except BrokerUnavailable as exc:
            return Retry(str(exc))
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
        try:
            # One deadline for both: each read waits out "not now" alone, and a version's
            # contents are many reads; the run's heartbeat has not started yet.
            async with asyncio.timeout(NOT_NOW_WAIT_S):
                await resolve_contents(self.blobs, state)
                cancelled = await when_available(
                    lambda: self.cancels.check(generation_id),
                    what=f"check whether generation {generation_id} was cancelled",
                )
        except BlobError as exc:
            return Retry(f"the log names file contents the broker cannot give: {exc}")
        except BrokerUnavailable as exc:
            return Retry(str(exc))
        except TimeoutError:
            return Retry(
                f"the broker did not give generation {generation_id}'s file contents "
                f"within {NOT_NOW_WAIT_S:.0f} s"
            )
        writer = FoldingWriter.after(
            self.js,
            history,
            source=source_uri("orchestrator", self.config.worker),
            state=state,
            blobs=self.blobs,
        )
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
        except BrokerUnavailable as exc:  # an append (LogUnavailable) or another call
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
            if says_not_now(exc):
                # Not an internal error: the broker said "not now" to a call made once.
                log.warning(
                    "Generation {generation_id} paused: the broker did not answer; it will "
                    "be retried",
                    generation_id=generation_id,
                    phase=run.phase,
                    error=repr(exc),
                )
                return Retry(f"the broker did not answer: {exc!r}")
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
        writer: FoldingWriter,
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
        self.parent: GenerationState | None = None
        self.parent_passed = False
        request = state.request
        assert request is not None
        self.request = request
        self.generation_id = state.generation_id

    async def execute(self) -> None:
        try:
            if self.cancelled.is_set():
                raise Cancelled
            known: Provider | None = None
            with contextlib.suppress(ProviderError):
                known = self.runner.providers.get(self.request.provider)
            await self._announce(held=known is not None and _instant(known))
            provider = self.runner.providers.get(self.request.provider)  # or ProviderError
            if self.request.kind == "iterate":
                self.parent_files = await self._parent_files()
            todo = [p for p in PHASES if p.name not in self.state.summary.phases_completed]
            for plan, following in zip(todo, [*todo[1:], None], strict=True):
                await self._phase(plan, provider, following)
            await self._complete()
        except Cancelled:
            await self._cancelled()
        except ProviderError as exc:
            await self.fail(exc)

    async def _announce(self, *, held: bool) -> None:
        """`generation.started` (or `generation.resumed`); `held`: the start goes in with
        the first phases' batch (see `_holds`)."""
        if self.state.summary.started_at is None:
            fields: dict[str, Any] = {
                "plan": list(PHASES),
                "worker": self.runner.config.worker,
                "provider": self.request.provider,
                "model": self.request.model,
                "progress": 0,
            }
            if held:
                batch = self.writer.batch()
                batch.add(GenerationStarted, **fields)
                self.writer.hold(batch)
            else:
                await self.writer.emit(GenerationStarted, **fields)
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
        parent = await read_parent(self.runner.js, self.runner.blobs, parent_id)
        self.parent = parent
        self.parent_passed = (
            parent.summary.verification is not None
            and parent.summary.verification.status == "passed"
        )
        return parent.file_contents()

    async def _phase(
        self, plan: PhasePlan, provider: Provider, following: PhasePlan | None = None
    ) -> None:
        """Run one phase; its files, deletions and `phase.completed` go in as one atomic
        batch, with the `phase.started` of the `following` phase (it starts right then:
        one append fewer per phase, and a resumed run finds it started)."""
        self.phase = plan.name
        if self.cancelled.is_set():
            raise Cancelled
        if plan.name not in self.state.summary.phases_started:
            fields = {"phase": plan.name, "title": plan.title}
            if _instant(provider):  # it goes in with the phase's own batch
                batch = self.writer.batch()
                batch.add(PhaseStarted, **fields, progress=progress_before(plan.name))
                self.writer.hold(batch)
            else:
                await self.writer.emit(PhaseStarted, **fields, progress=progress_before(plan.name))
        started = time.monotonic()
        if plan.name == "plan" and self.request.kind == "iterate":
            assert self.parent is not None
            await name_parent_files(self.writer, self.runner.blobs, self.state, self.parent)
        producer = PhaseProducer(self.writer, self.state, self.cancelled, self.parent_files)
        output = await producer.produce(plan, provider)
        if self.cancelled.is_set():
            raise Cancelled
        # The phase's files, deletions and phase.completed go in as one atomic batch: after
        # a crash the log holds all of the phase or none of it. (The batch may continue
        # the held one of the phases before: see `_holds`.)
        batch = self.writer.batch()
        first = len(batch)
        self._apply(plan, output, batch)
        staged = {e.path for e in batch.events[first:] if isinstance(e, FileWritten)}
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
            # The version is whole: its last files go in, then its own tests run. With no
            # verifier to run them, nothing reads the log before `generation.completed`:
            # an instant provider's batch stays held (see `_holds`).
            if not self.runner.verifier.enabled and self._holds(provider, None, batch):
                self.writer.hold(batch)
            else:
                await batch.append()
            repairs = RepairLoop(
                self.runner.js,
                self.runner.verifier,
                self.writer,
                self.state,
                self.cancelled,
                producer,
                rounds=self.runner.config.repair_rounds,
                parent_passed=self.parent_passed,
            )
            await repairs.run(provider)
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
        if following is not None and following.name not in self.state.summary.phases_started:
            batch.add(
                PhaseStarted,
                phase=following.name,
                title=following.title,
                progress=progress_before(following.name),
            )
        held = self._holds(provider, following, batch)
        if held:
            self.writer.hold(batch)
        else:
            await batch.append()
        metrics.phase_seconds.labels(plan.name, self.request.provider).observe(
            time.monotonic() - started
        )
        # A held phase is not in the log yet and took no time to speak of (an instant
        # provider's: seven lines in a millisecond): DEBUG; the generation's `completed`
        # line says when it went in.
        (log.debug if held else log.info)(
            "Phase {phase} of generation {generation_id} completed",
            phase=plan.name,
            generation_id=self.generation_id,
            files=len(written),
            progress=plan.progress,
        )

    def _holds(self, provider: Provider, following: PhasePlan | None, batch: EventBatch) -> bool:
        """Whether a phase's batch waits to go in with what follows it: only where the
        provider answers at once (`instant`: the offline provider, no model called, the
        same output again if a crash makes a resumed run redo it), and up to HELD_EVENTS.
        Into the verify phase only where no verifier reads the version (KILN_VERIFY=false);
        `following` None is the verify phase itself, whose end `_complete` appends at once
        with `generation.completed`. Each phase is still whole or absent in the log; on a
        one-replica file stream each atomic batch costs nats-server a store of its own on
        disk, so a generation of the offline provider goes in as one batch, not six."""
        return (
            _instant(provider)
            and (
                following is None or following.name != "verify" or not self.runner.verifier.enabled
            )
            and len(batch) < HELD_EVENTS
        )

    def _apply(self, plan: PhasePlan, output: PhaseOutput, batch: EventBatch) -> None:
        """Add the phase's files and deletions to `batch`, skipping what the log already
        has (the guard has made sure no path is written twice, or written and deleted)."""
        before, target = progress_before(plan.name), plan.progress
        count = len(output.files)
        for index, file in enumerate(output.files):
            if file_content(self.state, file.path) == file.content:
                continue
            progress = before + (target - before) * (index + 1) // (count + 1)
            add_file_written(batch, file.path, file.content, plan.name, "generated", progress)
        for deletion in output.deletions:
            if deletion.path not in self.state.files:
                continue
            batch.add(FileDeleted, path=deletion.path, reason=deletion.reason, phase=plan.name)

    async def _complete(self) -> None:
        missing = missing_parent_files(
            self.parent_files, self.state.file_contents(), set(self.state.deleted)
        )
        if missing:
            await self.writer.flush()
            raise RuntimeError(f"parent files lost without a deletion: {missing[:10]}")
        summary = self.state.summary
        started = summary.started_at or summary.created_at or utc_now()
        duration_ms = int((utc_now() - started).total_seconds() * 1000)
        file_count, total_bytes = summary.file_count, summary.total_bytes
        # With the held batch, if any (see `_holds`): one atomic append, or one message.
        batch = self.writer.batch()
        batch.add(
            GenerationCompleted,
            file_count=file_count,
            total_bytes=total_bytes,
            duration_ms=duration_ms,
            progress=100,
        )
        await batch.append()
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


def _instant(provider: Provider) -> bool:
    """Whether `provider` answers a phase at once (`OfflineProvider.instant`)."""
    return bool(getattr(provider, "instant", False))
