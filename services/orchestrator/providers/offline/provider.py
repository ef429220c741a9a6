"""The offline provider: a deterministic project generator, no API key, no network.

Creating, it turns the schema into a spec (kiln.json) and builds the whole project from
it — a Litestar + SQLAlchemy + msgspec service with pytest tests — handing each phase
its share of the files. Iterating, it reads the parent's kiln.json, applies the prompt
(one of the forms in `modifications.UNDERSTOOD_PROMPTS`), rebuilds, and returns what
changed, with explicit deletions. The same request always gives the same output, byte
for byte, so a corrective retry or a resumed generation gets exactly what it got before.

It calls no model, so it reports no `llm.called`; with a phase delay (for demos and
tests) it reports progress while it waits and stops as soon as the generation is
cancelled.
"""

from __future__ import annotations

import asyncio
import math
import re

import msgspec

from contracts import limits
from contracts.phases import GeneratedFile, PhaseOutput
from contracts.schema import ProjectSchema
from services.orchestrator.providers.base import PhaseRequest, ProviderError, Reporter
from services.orchestrator.providers.offline.iteration import LockedConflict, plan_iteration
from services.orchestrator.providers.offline.modifications import (
    AddFeature,
    ModificationError,
    apply,
    describe,
    parse_prompt,
)
from services.orchestrator.providers.offline.project import Build, cached_build, phase_files
from services.orchestrator.providers.offline.spec import (
    SPEC_PATH,
    ProjectSpec,
    SpecError,
    dump_spec,
    load_spec,
    spec_from_schema,
    spec_problems,
)
from services.orchestrator.providers.offline.templates.edge_tests import PACKAGE as EDGE_CASES

# The delay of a phase is slept in steps of at most this long, checking for a cancel.
STEP_S = 0.05
# New projects whose spec and build are remembered (`_created`): a generation asks for each
# of its phases with the same request, and several generations may run at once.
CREATED_KEPT = 16


class OfflineProvider:
    """Projects generated from the schema by templates, deterministically."""

    name = "offline"

    def __init__(self, phase_delay_s: float = 0.0) -> None:
        self.phase_delay_s = max(0.0, phase_delay_s)

    @property
    def instant(self) -> bool:
        """True when a phase is answered at once (no phase delay): the runner then appends
        the phases together (each still whole), as nothing is gained by showing them apart
        and a resumed run gets the same output again."""
        return self.phase_delay_s <= 0

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        """The files and deletions of one phase, or ProviderError."""
        _stop_if_cancelled(reporter)
        output = self._create(request) if request.kind == "create" else self._iterate(request)
        size = sum(len(f.content.encode()) for f in output.files)
        await self._pace(reporter, size)
        return output

    def _create(self, request: PhaseRequest) -> PhaseOutput:
        if request.schema is None:
            raise ProviderError(
                "The offline provider creates a project from an entity schema, and this "
                "request has none.",
                kind="unsupported_prompt",
            )
        spec, build = _created(request.project_name, request.schema, request.prompt.strip())
        if request.phase == "verify":
            return PhaseOutput(summary=_verify_summary(build, request.files))
        files = phase_files(build, request.phase)
        return PhaseOutput(
            files=[_file(path, content) for path, content in files.items()],
            summary=_create_summary(request.phase, spec, files),
        )

    def _iterate(self, request: PhaseRequest) -> PhaseOutput:
        parent = request.parent_files.get(SPEC_PATH)
        if parent is None:
            raise ProviderError(
                f"The parent version has no {SPEC_PATH}, so the offline provider cannot tell "
                "what the project is (only projects it generated can be changed with it). "
                "Use the gemini provider for this project.",
                kind="unsupported_prompt",
            )
        try:
            old_spec = load_spec(parent)
        except SpecError as exc:
            raise ProviderError(
                f"The parent's {SPEC_PATH} cannot be read: {exc}. Fix it or use the gemini "
                "provider.",
                kind="unsupported_prompt",
            ) from None
        try:
            modifications = parse_prompt(request.prompt)
            new_spec = apply(old_spec, modifications)
        except ModificationError as exc:
            raise ProviderError(str(exc), kind="unsupported_prompt") from None
        what = describe(modifications)
        problems = spec_problems(new_spec)
        if problems:
            raise ProviderError(
                f"Cannot {what}: " + "; ".join(problems[:10]), kind="unsupported_prompt"
            )
        old_problems = spec_problems(old_spec)
        if old_problems:
            raise ProviderError(
                f"The parent's {SPEC_PATH} is not a valid spec: " + "; ".join(old_problems[:10]),
                kind="unsupported_prompt",
            )
        try:
            plan = plan_iteration(
                _build(old_spec),
                _build(new_spec),
                request.files,
                frozenset(request.locked_paths),
                what,
            )
        except LockedConflict as exc:
            raise ProviderError(exc.message, kind="unsupported_prompt") from None
        if request.phase == "verify":
            return PhaseOutput(
                summary=f"Nothing to write: the earlier phases made every change to {what}."
            )
        output = plan.output(request.phase, "")
        summary = _iterate_summary(
            request.phase, what, output, plan.kept_locked.get(request.phase, [])
        )
        if request.phase == "tests":
            summary += _tests_note(
                output,
                plan.kept_tests.get("tests", []),
                again=old_spec.has("edge_cases")
                and any(m == AddFeature("edge_cases") for m in modifications),
            )
        return PhaseOutput(files=output.files, deletions=output.deletions, summary=summary)

    async def _pace(self, reporter: Reporter, size: int) -> None:
        """Wait the phase delay in small steps, reporting progress; stop when cancelled."""
        if self.phase_delay_s <= 0:
            return
        steps = max(1, math.ceil(self.phase_delay_s / STEP_S))
        for step in range(1, steps + 1):
            await asyncio.sleep(self.phase_delay_s / steps)
            _stop_if_cancelled(reporter)
            await reporter.progress(bytes_received=size * step // steps)


def _stop_if_cancelled(reporter: Reporter) -> None:
    if reporter.cancelled():
        raise ProviderError("the generation was cancelled", kind="cancelled")


_created_specs: dict[tuple[str, bytes, str], tuple[ProjectSpec, Build]] = {}


def _created(name: str, schema: ProjectSchema, description: str) -> tuple[ProjectSpec, Build]:
    """The spec of a new project and its checked build (`_build`), made once per request
    and remembered by the schema's JSON: every phase of a generation asks again with the
    same schema, and the spec's checks (the schema rules, the limits over every file) took
    a tenth of the orchestrator's time when run per phase. A spec that fails its checks is
    not remembered: each ask raises the same ProviderError."""
    key = (name, msgspec.json.encode(schema), description)
    found = _created_specs.get(key)
    if found is None:
        spec = spec_from_schema(name, schema, description)
        found = spec, _build(spec)
        if len(_created_specs) >= CREATED_KEPT:
            del _created_specs[next(iter(_created_specs))]  # the oldest
        _created_specs[key] = found
    return found


def _build(spec: ProjectSpec) -> Build:
    """The build of a spec, or ProviderError when the spec is not valid."""
    problems = spec_problems(spec)
    if problems:
        raise ProviderError(
            "The offline provider cannot build this schema: " + "; ".join(problems[:10]),
            kind="unsupported_prompt",
        )
    build = cached_build(dump_spec(spec))
    too_large = [
        (path, size)
        for path, (_, content) in build.items()
        if (size := len(content.encode())) > limits.MAX_FILE_BYTES
    ]
    total = sum(len(content.encode()) for _, content in build.values())
    if (
        too_large
        or len(build) > limits.MAX_FILES_PER_GENERATION
        or total > limits.MAX_GENERATION_BYTES
    ):
        detail = ", ".join(f"{path} would be {size:,} bytes" for path, size in too_large[:5])
        raise ProviderError(
            "This schema is too large for one project within Kiln's limits "
            f"({len(build):,} files, {total:,} bytes{'; ' + detail if detail else ''}; "
            f"limits: {limits.MAX_FILE_BYTES:,} bytes per file, "
            f"{limits.MAX_FILES_PER_GENERATION:,} files, {limits.MAX_GENERATION_BYTES:,} bytes). "
            "Split it into smaller projects.",
            kind="limits",
        )
    return build


def _file(path: str, content: str) -> GeneratedFile:
    return GeneratedFile(path=path, content=content)


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _create_summary(phase: str, spec: ProjectSpec, files: dict[str, str]) -> str:
    entities = _plural(len(spec.entities), "entity", "entities")
    if phase == "plan":
        return f"Planned the project: {SPEC_PATH} with {entities}, pyproject.toml and the package."
    if phase == "models":
        return f"Wrote app/db.py and the SQLAlchemy models of {entities}."
    if phase == "schemas":
        return f"Wrote the msgspec Create, Update and Read bodies of {entities}."
    if phase == "api":
        return f"Wrote the Litestar routes of {entities}, the shared helpers and app/main.py."
    if phase == "tests":
        return f"Wrote {_plural(len(files), 'test file')} that drive every route through HTTP."
    if phase == "docs":
        return "Wrote README.md and docs/api.md."
    return f"Wrote {_plural(len(files), 'file')}."


def _verify_summary(build: Build, files: dict[str, str]) -> str:
    missing = [path for path, (_, content) in build.items() if files.get(path) != content]
    if missing:
        return (
            f"{_plural(len(missing), 'generated file')} differ from the spec "
            f"(first: {missing[0]}); nothing else to write."
        )
    return f"All {len(build)} generated files match {SPEC_PATH}; nothing left to write."


def _tests_note(output: PhaseOutput, kept: list[str], *, again: bool) -> str:
    """What the tests phase of an iteration adds to its summary: the new tests, counted;
    that the edge-case tests were there already; test files kept as someone wrote them."""
    note = ""
    added = sum(
        len(re.findall(r"^def test_", f.content, re.MULTILINE))
        for f in output.files
        if f.path.startswith(f"{EDGE_CASES}/test_")
    )
    if added:
        note += f" They hold {_plural(added, 'new test')}; no existing test changed."
    if again:
        note += f" The project already had its edge-case tests ({EDGE_CASES}/): " + (
            "only the missing files were written." if output.files else "nothing to add."
        )
    if kept:
        note += f" Kept {', '.join(kept[:5])} as written (not made by Kiln's offline build)."
    return note


def _iterate_summary(phase: str, what: str, output: PhaseOutput, kept: list[str]) -> str:
    changes = []
    if output.files:
        changes.append(f"wrote {_plural(len(output.files), 'file')}")
    if output.deletions:
        changes.append(f"deleted {_plural(len(output.deletions), 'file')}")
    if changes:
        summary = f"{' and '.join(changes).capitalize()} to {what}."
    else:
        summary = f"Nothing in the {phase} phase changes to {what}."
    if kept:
        summary += (
            f" Left the locked {', '.join(kept)} as {'it is' if len(kept) == 1 else 'they are'}."
        )
    return summary
