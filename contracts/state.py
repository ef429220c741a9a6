"""A generation's state as the fold of its events.

The same function rebuilds a generation in the orchestrator (to resume after a crash, and
as it writes), projects it in storage and answers the gateway's status, so every reader
agrees on what a log means. The page folds the same events in `static/model.js`; the
cases both must agree on are in `tests/contracts/fold_cases.json`.

A state is two parts: the `GenerationSummary` (every scalar of the generation: what
storage keeps as its row and the API shows as its status) and the file set (path →
`FileState`, and the deletions), which storage keeps as file rows. To add a field: give
it a default in `GenerationSummary` and set it in `apply`; storage and the API copy it by
name (see services/storage/rows.py and services/gateway/views.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from contracts.events import (
    Event,
    FailedTest,
    FileDeleted,
    FileWritten,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationResumed,
    GenerationStarted,
    InheritedFile,
    LlmCalled,
    LlmRetrying,
    PhaseCompleted,
    PhaseProgress,
    PhaseStarted,
    RepairCompleted,
    RepairReverted,
    RepairStarted,
    RestoredVerification,
    VerifyCompleted,
    VerifyStarted,
    VerifyUnavailable,
    VersionBasedOn,
    verification_counts,
)

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class FileState(msgspec.Struct):
    """One file of the version as the log has it so far.

    `content` is None where the fold was told not to keep it, and for a file the log names
    by content only (inherited through `version.based_on`, or a `file.written` without
    inline content) until a reader fills it from the blob store
    (services/common/blobs.py `resolve_contents`)."""

    path: str
    sha256: str
    size: int
    phase: str
    origin: str = "generated"
    content: str | None = None


VerifyStatus = Literal["running", "passed", "failed", "no_tests", "unverified"]
RepairStatus = Literal["running", "changed", "unchanged", "rejected", "failed", "reverted"]


class RepairRound(msgspec.Struct, kw_only=True):
    """One repair round: the failing tests it was given and what came of it.

    `running` until its repair.completed; then `changed` (verified again next),
    `unchanged`, `rejected` (by the guard: `rules`), `failed` (the model could not answer),
    or `reverted` (it made things worse and its files were put back).
    """

    round: int
    status: RepairStatus = "running"
    failing: list[str] = []
    failing_count: int = 0
    files_changed: list[str] = []
    rules: list[str] = []
    reason: str | None = None


class Verification(msgspec.Struct, kw_only=True):
    """The latest sandboxed run of the version's own tests, lint and compile check.

    `running` while a verifier works on round `round`; then its verdict with the counts,
    or `unverified` with the `reason` nothing could be judged.
    """

    status: VerifyStatus
    round: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    lint_findings: int = 0
    format_findings: int = 0
    duration_ms: int = 0
    compile_errors: list[str] = []
    failures: list[FailedTest] = []
    reason: str | None = None
    repair_rounds: int = 0
    """Repair rounds that ended (whatever came of them)."""
    repairs: list[RepairRound] = []
    headline: str = ""
    """The verification in a few words, as every reader shows it (`verification_headline`)."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verification_headline(v: Verification) -> str:
    """`verified: passed after 1 repair round`, `failed: 3 tests still failing after 2
    rounds`, `repairing: round 1, 2 tests failing` … (model.js says it the same way)."""
    last = v.repairs[-1] if v.repairs else None
    rounds = v.repair_rounds
    if last is not None and last.status == "running":
        return f"repairing: round {last.round}, {_plural(last.failing_count, 'test')} failing"
    if v.status == "running":
        return f"verifying after repair round {v.round}" if v.round else "verifying"
    if v.status == "unverified":
        return f"unverified: {v.reason or 'no reason given'}"
    if v.status == "no_tests":
        return "verified: no tests"
    if v.status == "passed":
        after = f" after {_plural(rounds, 'repair round')}" if rounds else ""
        return f"verified: passed{after}"
    failing = v.failed + v.errors
    if not failing and v.compile_errors:
        line = f"failed: {_plural(len(v.compile_errors), 'file')} do not compile"
    else:
        line = f"failed: {_plural(failing, 'test')}"
        line += f" still failing after {_plural(rounds, 'round')}" if rounds else " failing"
    if last is not None and last.status in ("reverted", "rejected", "failed"):
        why = ", ".join(last.rules) if last.status == "rejected" else (last.reason or "")
        line += f" (round {last.round} {last.status}{': ' + why if why else ''})"
    return line


class GenerationSummary(msgspec.Struct, kw_only=True):
    """Every scalar the log of one generation says, folded: its row and its status.

    `file_count` and `total_bytes` are kept by `apply` as files come and go.
    """

    generation_id: str
    project_id: str
    owner: str = ""
    project_name: str = ""
    version: int = 0
    kind: str = "create"
    parent_generation_id: str | None = None
    provider: str = "offline"
    model: str | None = None
    prompt: str = ""
    locked_paths: list[str] = []
    status: Status = "pending"
    progress: int = 0
    phase: str | None = None
    phases_started: list[str] = []
    phases_completed: list[str] = []
    phase_durations_ms: dict[str, int] = {}
    file_count: int = 0
    total_bytes: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    llm_calls: int = 0
    error: str | None = None
    error_phase: str | None = None
    error_kind: str | None = None
    retryable: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    verification: Verification | None = None
    last_seq: int = 0

    @property
    def is_terminal(self) -> bool:
        """True once completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


class GenerationState(msgspec.Struct, kw_only=True):
    """One generation folded: its summary, its file set, and the request it carries."""

    summary: GenerationSummary
    files: dict[str, FileState] = {}
    """path → the file as last written; a deleted file is not here."""
    deleted: dict[str, str] = {}
    """path → the reason of its explicit deletion (until written again)."""
    request: GenerationRequested | None = None
    retrying: LlmRetrying | None = None
    """The retry announced in the current phase, until the phase moves on."""
    based_on: str | None = None
    """The parent generation whose files the version inherited by manifest (`version.based_on`)."""
    verify_output: str = ""
    """The end of the captured output of the latest verification's test run, when it failed
    (kept here, not in the summary every reader gets: only a repair round reads it)."""

    @property
    def generation_id(self) -> str:
        """The generation's id."""
        return self.summary.generation_id

    @property
    def is_terminal(self) -> bool:
        """True once completed, failed or cancelled."""
        return self.summary.is_terminal

    def file_contents(self) -> dict[str, str]:
        """path → content of every file whose content the fold kept (a file the log names
        by content only once resolved: see `unresolved`)."""
        return {p: f.content for p, f in self.files.items() if f.content is not None}

    def unresolved(self) -> dict[str, FileState]:
        """path → file of every file whose content is not filled in yet (all of them in a
        fold told not to keep contents)."""
        return {p: f for p, f in self.files.items() if f.content is None}


def new_state(event: Event) -> GenerationState:
    """The empty state of the generation an event belongs to."""
    return GenerationState(
        summary=GenerationSummary(generation_id=event.generation_id, project_id=event.project_id)
    )


def apply(state: GenerationState, event: Event, *, keep_content: bool = True) -> GenerationState:
    """`state` with one more event applied (in place; returned for convenience).

    Events after a terminal event, and events already applied (seq not above `last_seq`),
    change nothing: a replay or a redelivery is harmless. Progress never goes back.
    """
    s = state.summary
    if event.seq <= s.last_seq:
        return state
    s.last_seq = event.seq
    if s.is_terminal:
        return state
    if event.progress is not None:
        s.progress = max(s.progress, event.progress)

    match event:
        case GenerationRequested():
            state.request = event
            s.owner = event.owner
            s.project_name = event.project_name
            s.version = event.version
            s.kind = event.kind
            s.parent_generation_id = event.parent_generation_id
            s.provider = event.provider
            s.model = event.model
            s.prompt = event.prompt
            s.locked_paths = list(event.locked_paths)
            s.created_at = event.at
        case GenerationStarted():
            s.status = "running"
            s.started_at = s.started_at or event.at
            s.model = event.model or s.model
        case GenerationResumed():
            s.status = "running"
        case PhaseStarted():
            s.status = "running"
            s.phase = event.phase
            state.retrying = None
            if event.phase not in s.phases_started:
                s.phases_started.append(event.phase)
        case PhaseProgress():
            state.retrying = None
        case PhaseCompleted():
            state.retrying = None
            if event.phase not in s.phases_completed:
                s.phases_completed.append(event.phase)
            s.phase_durations_ms[event.phase] = event.duration_ms
        case FileWritten():
            content = event.content if keep_content else None
            _add_file(state, event, event.phase, event.origin, content)
        case VersionBasedOn():
            state.based_on = event.parent_generation_id
            for inherited in event.files:
                _add_file(state, inherited, event.phase, "parent")
        case FileDeleted():
            _remove_file(state, event.path)
            state.deleted[event.path] = event.reason
        case LlmCalled():
            s.llm_calls += 1
            s.tokens_in += event.tokens_in
            s.tokens_out += event.tokens_out
            if event.outcome == "ok":
                state.retrying = None
        case LlmRetrying():
            state.retrying = event
        case VerifyStarted():
            state.verify_output = ""
            _verified(s, Verification(status="running", round=event.round))
        case VerifyCompleted():
            state.verify_output = event.output_tail
            _verified(s, _finished(event))
        case VerifyUnavailable():
            state.verify_output = ""
            _verified(s, Verification(status="unverified", round=event.round, reason=event.reason))
        case RepairStarted():
            v = s.verification or Verification(status="failed")
            if not any(r.round == event.round for r in v.repairs):
                v.repairs.append(
                    RepairRound(
                        round=event.round,
                        failing=list(event.failing),
                        failing_count=event.failing_count,
                    )
                )
            _verified(s, v)
        case RepairCompleted():
            v = s.verification or Verification(status="failed")
            for r in v.repairs:
                if r.round == event.round:
                    r.status = event.outcome
                    r.files_changed = sorted({*event.files_changed, *event.deleted})
                    r.rules = list(event.rules)
                    r.reason = event.reason or None
            _verified(s, v)
        case RepairReverted():
            for r in s.verification.repairs if s.verification else []:
                if r.round == event.round:
                    r.status = "reverted"
                    r.reason = event.reason or None
            state.verify_output = ""  # the restored verification's output is not kept
            _verified(s, _finished(event.restored))
        case GenerationCompleted():
            s.status = "completed"
            s.progress = 100
            s.finished_at = event.at
            state.retrying = None
        case GenerationFailed():
            s.status = "failed"
            s.error = event.message
            s.error_phase = event.phase
            s.error_kind = event.error_kind
            s.retryable = event.retryable
            s.finished_at = event.at
            state.retrying = None
        case GenerationCancelled():
            s.status = "cancelled"
            s.error = event.reason or f"cancelled by {event.by}"
            s.error_phase = event.phase
            s.finished_at = event.at
            state.retrying = None
    return state


def _verified(s: GenerationSummary, v: Verification) -> None:
    """`v` becomes the verification, with the repair rounds so far and its headline."""
    if s.verification is not None and s.verification is not v:
        v.repairs = s.verification.repairs
    v.repair_rounds = sum(1 for r in v.repairs if r.status != "running")
    v.headline = verification_headline(v)
    s.verification = v


def _finished(run: VerifyCompleted | RestoredVerification) -> Verification:
    """The verification of a finished run: a `verify.completed`, or the one a revert restores."""
    return Verification(status=run.verdict, round=run.round, **verification_counts(run))


def _add_file(
    state: GenerationState,
    named: FileWritten | InheritedFile,
    phase: str,
    origin: str,
    content: str | None = None,
) -> None:
    """Put a file the log names in the set (in place of one at its path, and no longer
    deleted), counted in the summary's count and bytes."""
    _remove_file(state, named.path)
    state.deleted.pop(named.path, None)
    state.files[named.path] = FileState(
        path=named.path,
        sha256=named.sha256,
        size=named.size,
        phase=phase,
        origin=origin,
        content=content,
    )
    state.summary.file_count += 1
    state.summary.total_bytes += named.size


def _remove_file(state: GenerationState, path: str) -> None:
    """Take a file out of the set and out of the summary's count and bytes."""
    removed = state.files.pop(path, None)
    if removed is not None:
        state.summary.file_count -= 1
        state.summary.total_bytes -= removed.size


def fold(events: Iterable[Event], *, keep_content: bool = True) -> GenerationState | None:
    """The state a sequence of one generation's events describes; None for no events."""
    state: GenerationState | None = None
    for event in events:
        if state is None:
            state = new_state(event)
        apply(state, event, keep_content=keep_content)
    return state
