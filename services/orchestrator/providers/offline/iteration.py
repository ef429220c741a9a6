"""What an iteration changes: the files to write and delete, phase by phase.

The parent's build (from its kiln.json) and the new build (from the modified spec) are
compared with the version so far:

- a file is written when the modification changes it (its new content differs from the
  parent's build) or when the version lacks it; a file the modification does not touch
  keeps whatever content it has now, so edits made since (by hand or by another
  provider) survive;
- a file the parent's build made and the new build does not is deleted explicitly, with
  a reason; a file the builder never made (added by a person or an LLM) is never touched;
- a test file the parent's build did not make (someone wrote it at a path the new build
  also uses) is kept as it is: an iteration adds tests, it never rewrites someone's;
- a locked file is never changed. When the modification would have to change a locked
  Markdown file, that file is left as it is and the summary says so (the project still
  works); when it would have to change or delete any other locked file, the iteration
  stops before anything is written, naming the file: a half-applied change to code
  would leave the project broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.phases import Deletion, GeneratedFile, PhaseOutput
from services.orchestrator.cheats import is_test_file
from services.orchestrator.guard import SHRINK_RATIO
from services.orchestrator.providers.offline.project import Build


class LockedConflict(Exception):
    """The modification needs to change locked files; `message` names them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Write:
    """A file to write in a phase."""

    path: str
    content: str
    rewrite_reason: str | None = None


@dataclass
class IterationPlan:
    """Every change of one iteration, by phase."""

    writes: dict[str, list[Write]] = field(default_factory=dict)
    deletions: dict[str, list[Deletion]] = field(default_factory=dict)
    kept_locked: dict[str, list[str]] = field(default_factory=dict)
    kept_tests: dict[str, list[str]] = field(default_factory=dict)

    def output(self, phase: str, summary: str) -> PhaseOutput:
        """The phase output of `phase`."""
        files = [
            GeneratedFile(path=w.path, content=w.content, rewrite_reason=w.rewrite_reason)
            for w in self.writes.get(phase, [])
        ]
        return PhaseOutput(files=files, deletions=self.deletions.get(phase, []), summary=summary)


def plan_iteration(
    old: Build,
    new: Build,
    current: dict[str, str],
    locked: frozenset[str],
    what: str,
) -> IterationPlan:
    """The writes and deletions that turn `current` into the new build, or LockedConflict.

    `old` is the build of the parent's spec, `new` the build of the modified spec,
    `current` the version so far, `what` the modification in a few words (for reasons).
    """
    plan = IterationPlan()
    conflicts: list[str] = []
    for path, (phase, content) in new.items():
        before = current.get(path)
        if before == content:
            continue
        untouched = path in old and old[path][1] == content
        if untouched and before is not None:
            continue
        if before is not None and path not in old and is_test_file(path):
            plan.kept_tests.setdefault(phase, []).append(path)
            continue
        if path in locked:
            if path.endswith(".md"):
                plan.kept_locked.setdefault(phase, []).append(path)
                continue
            conflicts.append(f"{path} (it would change)")
            continue
        reason = None
        if before is not None and len(content) < SHRINK_RATIO * len(before):
            reason = f"regenerated from kiln.json to {what}; the new version is shorter"
        plan.writes.setdefault(phase, []).append(Write(path, content, reason))
    for path, (phase, _) in old.items():
        if path in new or path not in current:
            continue
        if path in locked:
            conflicts.append(f"{path} (it would be deleted)")
            continue
        plan.deletions.setdefault(phase, []).append(
            Deletion(path=path, reason=f"no longer part of the project after: {what}")
        )
    if conflicts:
        raise LockedConflict(
            f"Cannot {what} with the offline provider: the change needs locked files: "
            f"{', '.join(conflicts)}. Unlock them and try again, or use the gemini provider "
            "for a change that works around them."
        )
    return plan
