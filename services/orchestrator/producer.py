"""Asking a provider for a phase's output (or a repair round's) and checking it.

The provider call is abandoned as soon as the generation is cancelled; its output goes
through the data-loss guard (and, for a repair, the cheating guard), and a rejected output
gets one corrective retry before the phase fails (or the repair round is rejected).
"""

from __future__ import annotations

import asyncio

from contracts.phases import PHASES, PhaseOutput, PhasePlan, progress_before
from contracts.state import GenerationState
from services.common.eventwriter import GenerationWriter, LogUnavailable, WriterConflict
from services.common.logs import get_logger, redactor
from services.orchestrator.cancels import Cancelled, run_unless_cancelled
from services.orchestrator.cheats import check_repair
from services.orchestrator.guard import Violation, check_output, correction_for, rejection_message
from services.orchestrator.providers.base import (
    PhaseRequest,
    Provider,
    ProviderError,
    RepairBrief,
)
from services.orchestrator.repairs import REPAIR_PROGRESS
from services.orchestrator.reporter import EventReporter
from services.orchestrator.verify import compile_errors

log = get_logger(__name__)


class PhaseProducer:
    """Produces the checked output of one generation's phases and repair rounds.

    It is given what a request is built from: the writer its reporters append progress
    with, the generation's state (the fold of its log, kept current by the writer), the
    cancel flag and the parent version's files (empty unless the generation iterates).
    """

    def __init__(
        self,
        writer: GenerationWriter,
        state: GenerationState,
        cancelled: asyncio.Event,
        parent_files: dict[str, str],
    ) -> None:
        self.writer = writer
        self.state = state
        self.cancelled = cancelled
        self.parent_files = parent_files
        request = state.request
        assert request is not None
        self.request = request
        self.generation_id = state.generation_id

    async def produce(self, plan: PhasePlan, provider: Provider) -> PhaseOutput:
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

    async def produce_repair(
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
        call = await run_unless_cancelled(provider.run_phase(request, reporter), self.cancelled)
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
