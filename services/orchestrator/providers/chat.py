"""The providers that are conversations with one chat model (gemini, openai)."""

from __future__ import annotations

from contracts.phases import PhaseOutput
from services.orchestrator.providers.base import PhaseRequest, Reporter
from services.orchestrator.providers.conversation import (
    CallPolicy,
    CallResult,
    Progress,
    converse,
)


class ChatModelProvider:
    """A provider whose phases are conversations with one chat model through `converse`.

    A subclass (gemini, openai) sets `name`, `label` (how messages name it) and `policy`,
    and supplies `default_model()` and `_stream`, its one streamed call.
    """

    name: str
    label: str
    policy: CallPolicy
    repairs = True  # a version whose tests fail goes back to the model (repairs.py)

    def default_model(self) -> str:
        """The model a request that names none gets."""
        raise NotImplementedError

    async def _stream(self, model: str, system: str, prompt: str, progress: Progress) -> CallResult:
        raise NotImplementedError

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        """The phase output the model writes for `request`, or ProviderError."""
        model = request.model or self.default_model()

        async def call(*, system: str, prompt: str, progress: Progress) -> CallResult:
            return await self._stream(model, system, prompt, progress)

        return await converse(
            request,
            reporter,
            provider=self.name,
            label=self.label,
            model=model,
            call=call,
            policy=self.policy,
        )
