"""Carrying out the verify-and-repair steps of a version (`repairs.py` decides them).

Once a version is whole, its own tests run (verify round 0); while an LLM version's tests
fail, its failures go back to the model (repair round n), the checked changes are
appended, and the version is verified again, up to the configured number of rounds. A
round that made things worse is reverted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from contracts.events import (
    FileDeleted,
    FileWritten,
    RepairCompleted,
    RepairReverted,
    RepairStarted,
)
from contracts.phases import PhaseOutput
from contracts.state import GenerationState
from services.common.blobs import resolve_contents
from services.common.eventlog import read_generation
from services.common.eventwriter import EventBatch
from services.common.logs import get_logger
from services.orchestrator.cancels import Cancelled, run_unless_cancelled
from services.orchestrator.folding import FoldingWriter, add_file_written, file_content
from services.orchestrator.producer import PhaseProducer
from services.orchestrator.providers.base import REPAIR_OUTPUT_CHARS, Provider, RepairBrief
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
from services.orchestrator.verification import VerifierClient, verify_step

log = get_logger(__name__)


@dataclass(eq=False)
class RepairLoop:
    """Verifies one whole version and repairs it while its tests fail.

    It is given all it works with: the stream (to read the log back for a revert), the
    verifier, the generation's writer and state (the fold of its log, kept current by the
    writer), the cancel flag, the producer that asks the model for a repair, the number of
    repair rounds allowed, and whether the parent version's tests passed.
    """

    js: JetStreamContext
    verifier: VerifierClient
    writer: FoldingWriter
    state: GenerationState
    cancelled: asyncio.Event
    producer: PhaseProducer
    rounds: int = field(kw_only=True)
    parent_passed: bool = field(kw_only=True)

    @property
    def generation_id(self) -> str:
        """The generation the loop verifies and repairs."""
        return self.state.generation_id

    async def run(self, provider: Provider) -> None:
        """Verify the version; while an LLM version's tests fail, repair and verify again.

        Each step is decided from the log's fold alone, so a resumed generation continues
        at the unfinished step and never repeats a finished one.
        """
        rounds = self.rounds
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
        step = await run_unless_cancelled(
            verify_step(self.writer, self.verifier, round_, done=False, started=started),
            self.cancelled,
        )
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
            output=self.state.verify_output[-REPAIR_OUTPUT_CHARS:],
            files=files_named(v, self.state.file_contents()),
            parent_passed=self.parent_passed,
        )
        output, rules, reason = await self.producer.produce_repair(provider, brief)
        batch = self.writer.batch()
        if output is not None:
            self._apply_repair(output, batch)
        written = sorted({e.path for e in batch.events if isinstance(e, FileWritten)})
        deleted = sorted({e.path for e in batch.events if isinstance(e, FileDeleted)})
        if written or deleted:
            outcome = "changed"
        elif output is not None:
            outcome = "unchanged"
        else:
            outcome = "rejected" if rules else "failed"
        batch.add(
            RepairCompleted,
            round=round_,
            files_changed=written,
            deleted=deleted,
            outcome=outcome,
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
            outcome=outcome,
            files=len(written) + len(deleted),
            reason=reason,
        )

    def _apply_repair(self, output: PhaseOutput, batch: EventBatch) -> None:
        for file in output.files:
            if file_content(self.state, file.path) != file.content:
                add_file_written(
                    batch, file.path, file.content, "repair", "generated", REPAIR_PROGRESS
                )
        for deletion in output.deletions:
            if deletion.path in self.state.files:
                batch.add(FileDeleted, path=deletion.path, reason=deletion.reason, phase="repair")

    async def _revert(self, round_: int) -> None:
        """Put back what repair round `round_` changed, and its verification before it."""
        history = [e.event for e in await read_generation(self.js, self.generation_id)]
        before = before_round(history, round_)
        v = before.summary.verification if before is not None else None
        assert before is not None and v is not None, "a reverted round has a repair.started"
        if self.writer.blobs is not None:
            # The log names the files by content: the texts to put back are blobs.
            await resolve_contents(self.writer.blobs, before)
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
                if file_content(self.state, path) != old.content:
                    add_file_written(
                        batch, path, old.content, "repair", old.origin, REPAIR_PROGRESS
                    )
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
