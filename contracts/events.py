"""Every event of a generation's log, as a tagged union on the `type` field.

Tags are dotted names (`phase.completed`), never class names, so renaming a class never
breaks the log. Schema evolution: new fields get defaults, a field's type never changes,
and unknown fields are ignored on decode, so old and new services run side by side.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from contracts.phases import PhasePlan
from contracts.schema import ProjectSchema

GenerationKind = Literal["create", "iterate"]
RetryReason = Literal["rate_limited", "server_error", "timeout", "invalid_output", "guard_rejected"]
FileOrigin = Literal["generated", "parent"]
# msgspec matches with `re.search`, where `$` also matches before a trailing newline; the
# lookahead refuses "id\n" and keeps the pattern valid JSON Schema (ECMAScript) as well.
Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$(?!\n)")]
Seq = Annotated[int, msgspec.Meta(ge=1)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]

# The end of a test run's captured output a verification keeps (verify result and event).
MAX_OUTPUT_TAIL_CHARS = 4000


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID, as `str(uuid.uuid4())` writes it.

    Written out from 16 random bytes: three times as fast as the `uuid.UUID` object's
    round trip, which was 4 % of the orchestrator's CPU (every event needs one)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"
"""The first hex digit of a UUID's fourth group: the RFC 4122 variant bits (10xx)."""


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What every event carries. `seq` counts 1, 2, 3 … within one generation."""

    event_id: Id
    generation_id: Id
    project_id: Id
    seq: Seq
    at: datetime
    progress: Percent | None = None
    # sha256 of the previous event of the generation in canonical form ("" for seq 1):
    # each generation's log is a hash chain that `kiln audit --verify` recomputes.
    prev_hash: str = ""


class GenerationRequested(Event, frozen=True, kw_only=True, tag="generation.requested"):
    """Accepted by the gateway; carries the whole request."""

    owner: str
    project_name: str
    version: int
    kind: GenerationKind = "create"
    schema: ProjectSchema | None = None
    prompt: str = ""
    provider: str = "offline"
    model: str | None = None
    parent_generation_id: str | None = None
    locked_paths: list[str] = []


class GenerationStarted(Event, frozen=True, kw_only=True, tag="generation.started"):
    """An orchestrator took the generation; carries the phase plan."""

    plan: list[PhasePlan]
    worker: str
    provider: str
    model: str | None = None


class GenerationResumed(Event, frozen=True, kw_only=True, tag="generation.resumed"):
    """An orchestrator took over after the previous one stopped mid-generation."""

    worker: str
    attempt: int
    from_phase: str


class PhaseStarted(Event, frozen=True, kw_only=True, tag="phase.started"):
    """One phase began."""

    phase: str
    title: str = ""


class PhaseProgress(Event, frozen=True, kw_only=True, tag="phase.progress"):
    """Inside a long phase: how much the provider has streamed so far."""

    phase: str
    bytes_received: int = 0
    tokens_received: int = 0
    message: str = ""


class PhaseCompleted(Event, frozen=True, kw_only=True, tag="phase.completed"):
    """One phase finished; lists the files it wrote and deleted."""

    phase: str
    files: list[str] = []
    deleted: list[str] = []
    summary: str = ""
    duration_ms: int = 0


Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]


class FileWritten(Event, frozen=True, kw_only=True, tag="file.written"):
    """One complete file of the version. `origin` says whether it came from the parent.

    The file is named by content: its bytes are the blob `sha256` of the blob stream
    (contracts/streams.py), which the writer stores before this event. `content` carries
    them inline instead in logs written before the blob stream (Kiln 0.1.0), and where a
    writer has no blob store; a reader takes it when it is there."""

    path: str
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]
    phase: str
    origin: FileOrigin = "generated"
    content: str | None = None


class InheritedFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file a version keeps unchanged from its parent: named by content, not copied.

    Its content is the blob `sha256` of the blob stream (contracts/streams.py), which the
    writer stores before the event that names it."""

    path: str
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]


class VersionBasedOn(Event, frozen=True, kw_only=True, tag="version.based_on"):
    """An iteration starts from its parent's files: the manifest of what it inherits.

    Each inherited file is in the version as if written with `origin: "parent"` in `phase`
    (a `file.written` of it later replaces it). A huge manifest may span several of these
    events, appended in one atomic batch; each adds its `files`."""

    parent_generation_id: Id
    files: list[InheritedFile] = []
    phase: str = "plan"


class FileDeleted(Event, frozen=True, kw_only=True, tag="file.deleted"):
    """An explicit deletion of a file of the parent version, with its reason."""

    path: str
    reason: str
    phase: str


class LlmCalled(Event, frozen=True, kw_only=True, tag="llm.called"):
    """One provider call, for cost and audit."""

    provider: str
    model: str
    phase: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int = 0
    attempt: int = 1
    outcome: str = "ok"


class LlmRetrying(Event, frozen=True, kw_only=True, tag="llm.retrying"):
    """A phase will be tried again after `delay_s` (rate limit, server error, bad output)."""

    phase: str
    reason: RetryReason
    delay_s: float
    attempt: int
    message: str = ""


VerifyVerdict = Literal["passed", "failed", "no_tests"]


class FailedTest(msgspec.Struct, frozen=True, kw_only=True):
    """One test that failed or errored in a verification, with its capped message."""

    test_id: str
    message: str = ""
    kind: Literal["failure", "error"] = "failure"


class VerifyStarted(Event, frozen=True, kw_only=True, tag="verify.started"):
    """The version's own tests, lint and compile check were asked of a sandboxed verifier.

    `round` is 0 for the version as generated, N after the N-th repair round."""

    round: int = 0


class VerifyCompleted(Event, frozen=True, kw_only=True, tag="verify.completed"):
    """A verifier ran the version's own tests in its sandbox: the verdict and the counts."""

    round: int = 0
    verdict: VerifyVerdict
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    duration_ms: int = 0
    lint_findings: int = 0
    format_findings: int = 0
    compile_errors: list[str] = []
    failures: list[FailedTest] = []
    verifier: str = ""
    output_tail: str = ""
    """The end of the test run's captured stdout and stderr (at most MAX_OUTPUT_TAIL_CHARS
    characters): what a repair round shows the model besides the failures."""


class VerifyUnavailable(Event, frozen=True, kw_only=True, tag="verify.unavailable"):
    """The version could not be verified (no sandbox, a dependency outside the runtime, no
    verifier answering): it stays `unverified`, with the reason."""

    round: int = 0
    reason: str


RepairOutcome = Literal["changed", "unchanged", "rejected", "failed"]


class RepairStarted(Event, frozen=True, kw_only=True, tag="repair.started"):
    """A repair round began: the failing tests of the last verification (round `round` - 1)
    went back to the model. `failing` names them (as the verifier listed them, capped);
    `failing_count` counts every failed or erroring test."""

    round: int
    failing: list[str] = []
    failing_count: int = 0


class RepairCompleted(Event, frozen=True, kw_only=True, tag="repair.completed"):
    """A repair round ended. `changed`: its files (written just before, in the same batch)
    are verified next as round `round`; `unchanged`: the model changed nothing; `rejected`:
    the guard refused the repair twice, `rules` name why; `failed`: the model could not
    answer (`reason`). Only `changed` is verified again; the others end the repair."""

    round: int
    files_changed: list[str] = []
    deleted: list[str] = []
    outcome: RepairOutcome = "changed"
    rules: list[str] = []
    reason: str = ""
    summary: str = ""


class RestoredVerification(msgspec.Struct, frozen=True, kw_only=True):
    """The verification of the version a revert went back to (as its verify.completed had it)."""

    round: int = 0
    verdict: VerifyVerdict
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    duration_ms: int = 0
    lint_findings: int = 0
    format_findings: int = 0
    compile_errors: list[str] = []
    failures: list[FailedTest] = []


VERIFICATION_COUNTS = (
    "passed",
    "failed",
    "errors",
    "skipped",
    "duration_ms",
    "lint_findings",
    "format_findings",
    "compile_errors",
    "failures",
)
"""What every record of a verification run holds under these names: the verifier's
`VerifyResult`, `verify.completed`, a revert's `RestoredVerification` and the fold's
`Verification` (tests/contracts/test_events.py checks that each has them all)."""


def verification_counts(run: Any) -> dict[str, Any]:
    """The counts of a verification run (`VERIFICATION_COUNTS`), taken by name from any
    record of one, lists copied: the one place they are passed from record to record."""
    return {
        name: list(value) if isinstance(value := getattr(run, name), list) else value
        for name in VERIFICATION_COUNTS
    }


class RepairReverted(Event, frozen=True, kw_only=True, tag="repair.reverted"):
    """Repair round `round` made things worse (more failing tests): its files were put back
    as they were (the file events just before, in the same batch), the version's
    verification is `restored` again, and no further round runs."""

    round: int
    files: list[str] = []
    reason: str = ""
    restored: RestoredVerification


class GenerationCompleted(Event, frozen=True, kw_only=True, tag="generation.completed"):
    """Every phase finished; the version is complete."""

    file_count: int
    total_bytes: int
    duration_ms: int


class GenerationFailed(Event, frozen=True, kw_only=True, tag="generation.failed"):
    """The generation stopped; files already written stay and stay downloadable."""

    phase: str | None
    message: str
    retryable: bool = False
    error_kind: str = "provider"
    files_kept: int = 0


class GenerationCancelled(Event, frozen=True, kw_only=True, tag="generation.cancelled"):
    """Cancelled by its owner; files already written stay."""

    by: str
    reason: str = ""
    phase: str | None = None
    files_kept: int = 0


AnyEvent = (
    GenerationRequested
    | GenerationStarted
    | GenerationResumed
    | PhaseStarted
    | PhaseProgress
    | PhaseCompleted
    | FileWritten
    | VersionBasedOn
    | FileDeleted
    | LlmCalled
    | LlmRetrying
    | VerifyStarted
    | VerifyCompleted
    | VerifyUnavailable
    | RepairStarted
    | RepairCompleted
    | RepairReverted
    | GenerationCompleted
    | GenerationFailed
    | GenerationCancelled
)
EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__
TERMINAL_TYPES: tuple[type[Event], ...] = (
    GenerationCompleted,
    GenerationFailed,
    GenerationCancelled,
)
TERMINAL_TAGS = frozenset({"generation.completed", "generation.failed", "generation.cancelled"})


def event_tag(event_type: type[Event]) -> str:
    """The dotted `type` tag of an event class."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def is_terminal(event: Event) -> bool:
    """True for the events that end a generation."""
    return isinstance(event, TERMINAL_TYPES)
