"""What a provider is given for one phase, what it returns, and how it reports as it goes."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from contracts.events import FailedTest, RetryReason
from contracts.phases import PhaseOutput, PhasePlan
from contracts.schema import ProjectSchema

ErrorKind = Literal[
    "provider",  # the provider failed in a way a retry may fix later
    "unsupported_prompt",  # the provider does not understand the prompt
    "auth",  # the provider rejected the credentials
    "quota",  # a daily quota is exhausted
    "invalid_output",  # the provider's output stayed invalid after retries
    "guard",  # the data-loss guard rejected the output after a corrective retry
    "limits",  # the output exceeds Kiln's size limits
    "cancelled",  # the generation was cancelled during the call
]


# A repair round shows the model at most this much of the end of the failed test run's output.
REPAIR_OUTPUT_CHARS = 3000


class RepairBrief(msgspec.Struct, frozen=True, kw_only=True):
    """What a repair round tells the model: the failing tests, the end of the test run's
    output and the files they point at (the plan comes with the request)."""

    round: int
    rounds: int
    """The most rounds this version gets."""
    failed: int = 0
    errors: int = 0
    failures: list[FailedTest] = []
    """The failing tests as the verifier listed them (ids and capped messages)."""
    compile_errors: list[str] = []
    output: str = ""
    """The end of the failed test run's captured output (at most REPAIR_OUTPUT_CHARS)."""
    files: list[str] = []
    """Paths the failures name (their test files, the modules in their tracebacks)."""
    parent_passed: bool = False
    """An iteration whose parent version passed its tests: the modification broke them."""


class PhaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a provider needs to produce one phase of a generation."""

    generation_id: str
    project_name: str
    phase: str
    plan: list[PhasePlan]
    kind: Literal["create", "iterate"]
    prompt: str
    schema: ProjectSchema | None
    files: dict[str, str]
    """The version so far: for an iteration it starts as the parent's files."""
    parent_files: dict[str, str]
    """The parent version's files (empty when creating)."""
    locked_paths: list[str] = []
    model: str | None = None
    correction: str | None = None
    """Set when the previous output of this phase was rejected: what was wrong with it."""
    attempt: int = 1
    repair: RepairBrief | None = None
    """Set for a repair round (phase `repair`): fix these failing tests."""


class LlmCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call to the model, answered or failed, as a provider reports it (`llm.called`)."""

    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    latency_ms: int
    attempt: int
    outcome: str


class Reporter(Protocol):
    """How a provider tells the world what it is doing while a phase runs."""

    async def progress(
        self, *, bytes_received: int = 0, tokens_received: int = 0, message: str = ""
    ) -> None:
        """Bytes or tokens streamed so far in this phase (throttled by the reporter)."""

    async def llm_called(self, call: LlmCall) -> None:
        """One call to the model finished (successfully or not)."""

    async def retrying(
        self, *, reason: RetryReason, delay_s: float, attempt: int, message: str
    ) -> None:
        """The provider will try again after `delay_s` seconds."""

    def cancelled(self) -> bool:
        """True once the generation has been cancelled: stop as soon as possible."""
        ...


class ProviderError(Exception):
    """A phase the provider cannot produce. `message` is shown to the user as is."""

    def __init__(
        self, message: str, *, kind: ErrorKind = "provider", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable


class Provider(Protocol):
    """Turns one phase of a request into a phase output."""

    name: str

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        """The files and deletions of one phase, or ProviderError."""
        ...
