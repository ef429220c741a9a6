"""The phase plan of a generation and the shape a provider returns for one phase."""

from __future__ import annotations

from typing import Annotated

import msgspec


class PhasePlan(msgspec.Struct, frozen=True):
    """One phase of the plan and the progress reached when it completes."""

    name: str
    progress: int
    title: str


PHASES: tuple[PhasePlan, ...] = (
    PhasePlan("plan", 5, "Planning the project"),
    PhasePlan("models", 20, "Writing the data models"),
    PhasePlan("schemas", 40, "Writing the request and response schemas"),
    PhasePlan("api", 60, "Writing the API"),
    PhasePlan("tests", 80, "Writing the tests"),
    PhasePlan("docs", 95, "Writing the documentation"),
    PhasePlan("verify", 100, "Running the project's own tests, lint and compile check"),
)
PHASE_NAMES: tuple[str, ...] = tuple(phase.name for phase in PHASES)


def phase_plan(name: str) -> PhasePlan:
    """The plan entry of a phase by name; KeyError for an unknown phase."""
    for phase in PHASES:
        if phase.name == name:
            return phase
    raise KeyError(name)


def progress_before(name: str) -> int:
    """The progress reached when the phase before `name` completed (0 for the first)."""
    index = PHASE_NAMES.index(name)
    return PHASES[index - 1].progress if index else 0


class GeneratedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A complete file a provider wrote. `rewrite_reason` makes a large shrink explicit."""

    path: Annotated[str, msgspec.Meta(description="Relative POSIX path inside the project")]
    content: Annotated[str, msgspec.Meta(description="The complete content of the file")]
    rewrite_reason: Annotated[
        str | None,
        msgspec.Meta(description="Set only when the file is deliberately rewritten much shorter"),
    ] = None


class Deletion(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """An explicit deletion of an existing file, with the reason a person can read."""

    path: str
    reason: str


class PhaseOutput(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What a provider returns for one phase: new or changed files, deletions and a summary."""

    files: list[GeneratedFile] = []
    deletions: list[Deletion] = []
    summary: str = ""
