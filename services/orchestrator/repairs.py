"""Repair rounds, the decisions: what comes next after a verification, what a round is told,
and what a revert puts back.

After the version is verified (round 0), a version of an LLM provider whose tests fail goes
back to the model with the failures (repair round 1), is verified again (round 1), and so
on up to `KILN_REPAIR_ROUNDS`. A round that makes things worse is reverted and ends the
loop, as does a round the guard rejects, one that changes nothing and one the model cannot
answer. Every decision is taken from the fold of the log alone (`next_step`), so an
orchestrator that resumes a generation continues at the unfinished step and never repeats
a finished one. `repair_loop.RepairLoop` carries the steps out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.events import Event, RepairStarted, RestoredVerification, verification_counts
from contracts.state import GenerationState, Verification, fold

REPAIR_PROGRESS = 98
MAX_BRIEF_FILES = 12


@dataclass(frozen=True)
class Verify:
    """Verify round `round` (`started`: its verify.started is in the log already)."""

    round: int
    started: bool


@dataclass(frozen=True)
class Repair:
    """Run repair round `round` (`started`: its repair.started is in the log already)."""

    round: int
    started: bool


@dataclass(frozen=True)
class Revert:
    """Put back the files repair round `round` changed: it made things worse."""

    round: int


@dataclass(frozen=True)
class Done:
    """Nothing more to verify or repair."""


Step = Verify | Repair | Revert | Done


def failing(v: Verification) -> int:
    """Failed and erroring tests of a verification (a file that does not compile counts)."""
    return v.failed + v.errors + (len(v.compile_errors) if not v.failed + v.errors else 0)


def next_step(v: Verification | None, *, rounds: int, repairable: bool) -> Step:
    """What the verify phase does next, given the verification the log folds to."""
    if v is None:
        return Verify(0, started=False)
    last = v.repairs[-1] if v.repairs else None
    if last is not None and last.status == "running":
        return Repair(last.round, started=True)
    if last is not None and last.status == "changed" and v.round < last.round:
        return Verify(last.round, started=False)
    if v.status == "running":
        return Verify(v.round, started=True)
    if last is not None and last.status == "changed" and last.round == v.round:
        if v.status == "failed" and failing(v) > last.failing_count:
            return Revert(last.round)
    elif last is not None:
        return Done()  # the last round was rejected, failed, changed nothing or was reverted
    if not repairable or v.status != "failed" or not failing(v) or len(v.repairs) >= rounds:
        return Done()
    return Repair(len(v.repairs) + 1, started=False)


_PY_PATH = re.compile(r"[\w./-]+\.py")


def files_named(v: Verification, files: dict[str, str]) -> list[str]:
    """The project's files the failures point at: their test files first, then every file
    a message names (a traceback's absolute path matches by its end)."""
    found: list[str] = []

    def add(candidate: str) -> None:
        candidate = candidate.lstrip("./")
        for path in files:
            if path not in found and (path == candidate or candidate.endswith("/" + path)):
                found.append(path)

    for failure in v.failures:
        test_file = failure.test_id.split("::", 1)[0]
        if not test_file.endswith(".py"):  # a JUnit class name: tests.test_api.TestX
            parts = test_file.split(".")
            for cut in range(len(parts), 0, -1):
                add("/".join(parts[:cut]) + ".py")
        else:
            add(test_file)
    for text in [*(f.message for f in v.failures), *v.compile_errors]:
        for match in _PY_PATH.findall(text):
            add(match)
    return found[:MAX_BRIEF_FILES]


def restored(v: Verification) -> RestoredVerification:
    """A finished verification as a revert's event carries it."""
    verdict = v.status if v.status in ("passed", "failed", "no_tests") else "failed"
    return RestoredVerification(round=v.round, verdict=verdict, **verification_counts(v))


def before_round(events: Sequence[Event], round_: int) -> GenerationState | None:
    """The generation as it was just before repair round `round_` started."""
    cut = next((e.seq for e in events if isinstance(e, RepairStarted) and e.round == round_), None)
    if cut is None:
        return None
    return fold(e for e in events if e.seq < cut)
