"""Checks on a phase's output before anything of it is published.

Two kinds of rule: the output must be safe (paths inside the project, sizes within the
limits), and it must not lose data (the data-loss guard): no file silently emptied, no
file shrunk by more than half or filled with elision placeholders unless the rewrite is
explicit, no locked file touched. A rejected output is retried once with the problems as
a corrective instruction; then the generation fails with a message naming every problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec
from ahocorasick_rs import AhoCorasick, Implementation, MatchKind

from contracts import limits
from contracts.paths import PathRejected, safe_path
from contracts.phases import Deletion, GeneratedFile, PhaseOutput

SHRINK_RATIO = 0.5

_LEADS = ("existing", "previous", "original", "remaining")
_THINGS = ("code", "implementation", "content", "method")
# The words every placeholder pattern contains (in lower case) at least one of: a file is
# searched for all of them in one pass, and nearly every file holds none of them.
_LEAD_WORDS = ("rest of", "...", "unchanged", "no changes", "same as before", *_LEADS, "omitted")
# Overlapping matches: every word a text holds is found, also one that overlaps another
# ("same as beforexisting"), as ten `in` tests would (five times as slow: 15 % of an
# orchestrator's CPU in B6).
_LEAD_SEARCH = AhoCorasick(list(_LEAD_WORDS), matchkind=MatchKind.Standard)
# A search without overlaps, as a DFA: ten times as fast again (a SIMD prefilter skips the
# text between candidates), and exact unless a word it found may hide another.
_LEAD_FIRST = AhoCorasick(
    list(_LEAD_WORDS), matchkind=MatchKind.LeftmostFirst, implementation=Implementation.DFA
)


def _may_hide(found: str, other: str) -> bool:
    """Whether a search without overlaps that reports `found` may skip an `other` there:
    one starts where the other does, or `other` starts inside `found`."""
    return found != other and (
        other in found
        or found.startswith(other)
        or other.startswith(found)
        or any(found.endswith(other[:k]) for k in range(1, len(other)))
    )


_MAY_HIDE = frozenset(a for a in _LEAD_WORDS for b in _LEAD_WORDS if _may_hide(a, b))
"""The lead words after which the search without overlaps may have missed another
("no changes" + "same as before" in "no changesame as before")."""


def _lead_thing(lowered: str, present: set[str]) -> bool:
    """Whether a lead word of the text is followed by a space and a thing ("existing code")."""
    for lead in _LEADS:
        if lead not in present:
            continue
        at = lowered.find(lead)
        while at >= 0:
            after = at + len(lead)
            if lowered.startswith(" ", after) and lowered.startswith(_THINGS, after + 1):
                return True
            at = lowered.find(lead, at + 1)
    return False


# Each placeholder pattern, with a test of the lowered text (and the lead words it holds)
# that must pass for the pattern to match at all: a pattern runs only over the few files
# that have its words, and those words are looked for in the text once, not per rule.
_ELISION_RULES: tuple[tuple[re.Pattern[str], Callable[[str, set[str]], bool]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE | re.MULTILINE), may_match)
    for pattern, may_match in (
        (
            r"rest of (the )?(code|file|implementation|class|function|module|methods?)s? "
            r"(remains?|stays?|is|are)( the same| unchanged)",
            lambda lowered, present: "rest of" in present,
        ),
        (
            r"\.\.\.\s*(existing|previous|rest of|remaining|other|unchanged|original)\b"
            r"[^\n]{0,40}\.\.\.",
            lambda lowered, present: "..." in present,
        ),
        (
            r"(#|//|/\*|<!--|--)\s*(unchanged|no changes|same as before|keep existing)\b",
            lambda lowered, present: (
                "unchanged" in present
                or "no changes" in present
                or "same as before" in present
                or ("existing" in present and "keep existing" in lowered)
            ),
        ),
        (
            r"(existing|previous|original|remaining) (code|implementation|content|methods?) "
            r"(here|remains?|goes here|unchanged|omitted|as before)",
            _lead_thing,
        ),
        (
            r"\b(code|content|implementation|methods?) omitted\b",
            lambda lowered, present: "omitted" in present,
        ),
        (
            r"\bomitted for brevity\b",
            lambda lowered, present: "omitted" in present and "omitted for brevity" in lowered,
        ),
        (r"^\s*(#|//)\s*\.\.\.\s*$", lambda lowered, present: "..." in present),
    )
)
ELISION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(pattern for pattern, _ in _ELISION_RULES)


class Violation(msgspec.Struct, frozen=True):
    """One rule an output breaks, for one path."""

    path: str
    rule: str
    detail: str

    def describe(self) -> str:
        """`path — detail`, as the user reads it."""
        return f"{self.path} — {self.detail}"


def lead_words_in(lowered: str) -> set[str]:
    """The placeholder lead words (`_LEAD_WORDS`) a lower-cased text holds.

    A search without overlaps finds every word a text holds unless a word it found may hide
    another (`_MAY_HIDE`): only then is the text searched again with overlaps."""
    found = set(_LEAD_FIRST.find_matches_as_strings(lowered))
    if found & _MAY_HIDE:
        return set(_LEAD_SEARCH.find_matches_as_strings(lowered, overlapping=True))
    return found


def find_elision(content: str, before: str | None) -> str | None:
    """The first elision placeholder in `content` that `before` did not already contain."""
    lowered = content.lower()
    present = lead_words_in(lowered)
    if not present:
        return None
    for pattern, may_match in _ELISION_RULES:
        if not may_match(lowered, present):
            continue
        match = pattern.search(content)
        if match and not (before and pattern.search(before)):
            return match.group(0).strip()
    return None


def check_output(
    output: PhaseOutput,
    *,
    current: dict[str, str],
    locked: frozenset[str],
) -> tuple[PhaseOutput, list[Violation]]:
    """The output with normalised paths, and every rule it breaks (empty when it passes).

    `current` is the version so far (for an iteration it began as the parent's files), so
    a file the parent had is judged against the content it has now.
    """
    violations: list[Violation] = []
    files: list[GeneratedFile] = []
    deletions: list[Deletion] = []
    seen: set[str] = set()

    def normalise(path: str) -> str | None:
        try:
            return safe_path(path)
        except PathRejected as exc:
            violations.append(Violation(exc.path, "unsafe_path", f"path rejected: {exc.reason}"))
            return None

    for file in output.files:
        path = normalise(file.path)
        if path is None:
            continue
        if path in seen:
            violations.append(Violation(path, "duplicate", "the output lists this file twice"))
            continue
        seen.add(path)
        size = len(file.content.encode())
        if size > limits.MAX_FILE_BYTES:
            violations.append(
                Violation(
                    path,
                    "too_large",
                    f"{size:,} bytes is over the {limits.MAX_FILE_BYTES:,}-byte limit per file",
                )
            )
            continue
        before = current.get(path)
        if path in locked and before != file.content:
            violations.append(Violation(path, "locked", "the file is locked and may not change"))
            continue
        if before is not None and before.strip() and not file.content.strip():
            violations.append(
                Violation(
                    path,
                    "dropped",
                    "the file was emptied; delete it explicitly, with a reason, instead",
                )
            )
            continue
        if (
            before is not None
            and file.rewrite_reason is None
            and len(file.content) < SHRINK_RATIO * len(before)
        ):
            violations.append(
                Violation(
                    path,
                    "shrunk",
                    f"it would shrink from {len(before):,} to {len(file.content):,} characters "
                    "without an explicit rewrite reason",
                )
            )
            continue
        placeholder = find_elision(file.content, before)
        if placeholder:
            violations.append(
                Violation(
                    path,
                    "placeholder",
                    f"it contains the elision placeholder {placeholder!r}; write the complete file",
                )
            )
            continue
        files.append(
            GeneratedFile(path=path, content=file.content, rewrite_reason=file.rewrite_reason)
        )

    for deletion in output.deletions:
        path = normalise(deletion.path)
        if path is None:
            continue
        if path in seen:
            violations.append(
                Violation(path, "duplicate", "the output both writes and deletes this file")
            )
            continue
        seen.add(path)
        if path in locked:
            violations.append(
                Violation(path, "locked", "the file is locked and may not be deleted")
            )
            continue
        if not deletion.reason.strip():
            violations.append(Violation(path, "deletion_reason", "a deletion needs a reason"))
            continue
        if path not in current:
            continue  # deleting what is not there changes nothing
        deletions.append(Deletion(path=path, reason=deletion.reason.strip()))

    after = dict(current)
    for f in files:
        after[f.path] = f.content
    for d in deletions:
        after.pop(d.path, None)
    if len(after) > limits.MAX_FILES_PER_GENERATION:
        violations.append(
            Violation(
                "*",
                "too_many_files",
                f"the project would have {len(after):,} files; the limit is {limits.MAX_FILES_PER_GENERATION:,}",
            )
        )
    total = sum(len(c.encode()) for c in after.values())
    if total > limits.MAX_GENERATION_BYTES:
        violations.append(
            Violation(
                "*",
                "too_large",
                f"the project would be {total:,} bytes; the limit is {limits.MAX_GENERATION_BYTES:,}",
            )
        )
    return PhaseOutput(files=files, deletions=deletions, summary=output.summary), violations


def missing_parent_files(
    parent: dict[str, str], result: dict[str, str], deleted: set[str]
) -> list[str]:
    """Parent files absent from the result without an explicit deletion (must be none)."""
    return sorted(p for p in parent if p not in result and p not in deleted)


def correction_for(phase: str, violations: list[Violation]) -> str:
    """The corrective instruction a provider gets after its output was rejected."""
    problems = "\n".join(f"- {v.describe()}" for v in violations)
    return (
        f"Your previous output for the {phase} phase was rejected:\n{problems}\n"
        "Return complete files only (never placeholders such as '... existing code ...'), "
        "keep every existing file unless you list it under deletions with a reason, "
        "set rewrite_reason when a file deliberately becomes much shorter, do not change "
        "locked files, and use relative paths inside the project."
    )


def rejection_message(phase: str, violations: list[Violation]) -> str:
    """The failure message after the corrective retry was rejected too."""
    problems = "; ".join(v.describe() for v in violations[:20])
    more = f" (and {len(violations) - 20} more)" if len(violations) > 20 else ""
    rules = ", ".join(sorted({v.rule for v in violations}))
    return (
        f"The output of the {phase} phase was rejected twice (rules: {rules}): {problems}{more}. "
        "Nothing of this phase was saved; the files of earlier phases are kept."
    )
