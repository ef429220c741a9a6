"""What is asked of a chat model for one phase, shared by the gemini and openai providers.

A system instruction with the rules every answer follows, and a prompt per phase built from
the request — the schema, the user's prompt, the plan, what this phase must produce, the
files so far within a context budget (large files summarised, and the prompt says which),
the locked paths, and a correction when the previous output was rejected. A repair round
gets the failing tests (ids and messages, capped), the end of the test run's captured output
(REPAIR_OUTPUT_CHARS), the plan and the files the failures point at, quoted first. The shape of the
answer is `answers.py`; the policy around each call is `conversation.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from contracts import limits
from contracts.codec import content_sha256
from contracts.phases import PHASES, phase_plan
from services.orchestrator.providers.base import REPAIR_OUTPUT_CHARS, PhaseRequest

# A file longer than this is summarised (first and last lines, size, sha256) even when the
# context budget would hold it: one huge file should not crowd out the rest of the project.
LARGE_FILE_CHARS = 24_000
SUMMARY_HEAD_LINES = 15
SUMMARY_TAIL_LINES = 5

DEFAULT_STACK = (
    "Unless the user's prompt asks for something else, the project is a Python 3.11 web "
    "service: SQLAlchemy 2.0 models, request and response schemas, a Litestar HTTP API with "
    "create, read, list, update and delete routes for every entity, pytest tests that run "
    "without network access, a pyproject.toml and a README.md."
)

PHASE_GOALS: dict[str, str] = {
    "plan": (
        "Plan the project. Write PLAN.md: the layout (one line per file the later phases "
        "will write, with what it holds) and the main decisions. Also write the skeleton: "
        "pyproject.toml with the dependencies, .gitignore and the package's __init__.py "
        "files. No models, schemas, routes or tests yet."
    ),
    "models": (
        "Write the data models: one module per entity with its fields (types and required "
        "flags as in the schema) and relations (as declared), and the database setup "
        "(base class, engine and session)."
    ),
    "schemas": (
        "Write the request and response schemas of every entity (create, update and read), "
        "with validation that matches the field types, required flags and enum values."
    ),
    "api": (
        "Write the HTTP API: create, read, list (paginated), update and delete routes for "
        "every entity, the application factory that wires models, schemas and routes, and "
        "clear error responses (404 for a missing row, 400 for invalid input)."
    ),
    "tests": (
        "Write pytest tests for every entity's routes: create, read, list, update, delete "
        "and a validation error. They must run with `pytest` on a fresh checkout, without "
        "network access (an in-memory or temporary SQLite database)."
    ),
    "docs": (
        "Write README.md: what the project is, how to install, run and test it, the "
        "entities and every endpoint. Add module docstrings where they are missing."
    ),
    "verify": (
        "Review every file so far as a careful engineer: fix anything that would not "
        "compile or import, names that do not match between modules, missing __init__.py "
        "files, and tests that cannot pass. Return only the files you change, complete; "
        "return an empty files list when everything is right."
    ),
}

# Words in a path that make a file relevant to a phase (it is quoted first).
PHASE_PATH_HINTS: dict[str, tuple[str, ...]] = {
    "plan": ("plan", "pyproject", "readme"),
    "models": ("model", "db", "database"),
    "schemas": ("schema", "model"),
    "api": ("api", "route", "app", "main", "schema"),
    "tests": ("test", "conftest", "api", "route"),
    "docs": ("readme", "doc", "api", "route"),
    "verify": (),
    "repair": ("test", "conftest"),
}

# A failure's message is quoted up to this many characters in a repair prompt.
REPAIR_MESSAGE_CHARS = 1500

REPAIR_RULES = (
    "Fix the code so that these tests pass. The tests are the specification: change the "
    "application code, not the tests, unless a test itself is plainly wrong (a typo, a "
    "wrong import path). Never delete or empty a test file, never remove a test function, "
    "never add skip or xfail markers, never replace an assertion with `assert True`: such "
    "a repair is rejected. Return only the files you change, complete."
)

SYSTEM_INSTRUCTION = f"""\
You are the code generator of Kiln. You write a software project phase by phase; each \
request is one phase, and your answer is saved file by file exactly as you give it.

Rules for every answer:
1. Answer with one JSON object in exactly this shape and nothing else (no prose, no \
Markdown fences): {{"files": [{{"path": "...", "content": "...", "rewrite_reason": null}}], \
"deletions": [{{"path": "...", "reason": "..."}}], "summary": "..."}}.
2. Every file is complete: its whole content, ready to save and run. Never write a \
placeholder or elision such as "... existing code ...", "rest of the file unchanged", \
"# ..." or "omitted for brevity"; a file with one is rejected.
3. Paths are relative POSIX paths inside the project, such as "app/models/product.py": \
no leading "/", no drive letter, no "..", no backslash, no control characters, no hidden \
files except .gitignore, .dockerignore, .editorconfig, .python-version, .env.example and \
.github/. At most {limits.MAX_FILE_BYTES:,} bytes per file.
4. List only the files this phase creates or changes. A file you do not list stays exactly \
as it is; never repeat an unchanged file.
5. To remove a file, list it under "deletions" with a reason a person can read. Never \
empty a file instead.
6. If you deliberately make an existing file less than half as long, set its \
"rewrite_reason" to say why; otherwise leave "rewrite_reason" null.
7. Never create, change or delete a locked path.
8. "summary" is one or two sentences on what this phase did.
"""


def system_instruction() -> str:
    """The rules every answer follows (the same for every phase)."""
    return SYSTEM_INSTRUCTION


def phase_prompt(
    request: PhaseRequest,
    *,
    context_chars: int,
    done: Iterable[str] = (),
    note: str | None = None,
) -> str:
    """The prompt of one phase.

    `done` lists the files of this phase already saved from an answer that was cut off at
    the output limit (the model is asked for the remaining ones); `note` says why the
    previous answer of this call could not be read.
    """
    if request.repair is not None:
        sections = _repair_sections(request)
    else:
        plan = phase_plan(request.phase)
        index = next(i for i, p in enumerate(PHASES) if p.name == request.phase)
        sections = [
            f"## Phase: {request.phase}\n"
            f"Phase {index + 1} of {len(PHASES)}: {plan.title}. Answer for this phase only."
        ]
        sections.append("## The plan\n" + _plan_lines(request))
        sections.append(_project_section(request))
        goal = PHASE_GOALS.get(request.phase, f"{plan.title}.")
        sections.append(f"## What this phase must produce\n{goal}")
    if request.locked_paths:
        sections.append(
            "## Locked paths (never create, change or delete them)\n"
            + "\n".join(f"- {p}" for p in sorted(request.locked_paths))
        )
    sections.append(_files_section(request, context_chars))
    done = sorted(set(done))
    if done:
        sections.append(
            "## Continue after the output limit\n"
            "Your previous answer for this phase was cut off at the output limit.\n"
            f"Already saved from this phase (do not write them again): {', '.join(done)}\n"
            "Write the remaining files of this phase (and its deletions and summary). Keep "
            "each file complete; if the remaining files are many, write fewer, smaller files."
        )
    if request.correction:
        sections.append("## Your previous output was rejected\n" + request.correction)
    if note:
        sections.append(
            "## Your previous answer could not be read\n"
            f"{note}\nAnswer with one JSON object in the required shape and nothing else."
        )
    sections.append(
        "## Answer\nOne JSON object: "
        '{"files": [...], "deletions": [...], "summary": "..."}. Nothing else.'
    )
    return "\n\n".join(sections) + "\n"


def _repair_sections(request: PhaseRequest) -> list[str]:
    """The head of a repair round's prompt: the failing tests and what to do about them."""
    repair = request.repair
    assert repair is not None
    failing = repair.failed + repair.errors
    sections = [
        "## Phase: repair\n"
        f"Repair round {repair.round} of at most {repair.rounds}. Every phase is done and the "
        f"project's own tests were run in a sandbox: {failing} failed or errored."
    ]
    sections.append("## The plan\n" + _plan_lines(request))
    sections.append(_project_section(request))
    if repair.parent_passed:
        sections.append(
            "## This iteration broke passing tests\nThe parent version passed all its tests; "
            "after this modification they fail. Keep the modification and fix the breakage."
        )
    lines = ["## The failing tests"]
    for failure in repair.failures:
        message = failure.message.strip()
        if len(message) > REPAIR_MESSAGE_CHARS:
            message = message[:REPAIR_MESSAGE_CHARS] + "\n[... cut ...]"
        lines.append(f"### {failure.test_id} ({failure.kind})\n```\n{message}\n```")
    if failing > len(repair.failures):
        lines.append(f"(and {failing - len(repair.failures)} more not listed)")
    if repair.compile_errors:
        lines.append("### Files that do not compile\n" + "\n".join(repair.compile_errors))
    sections.append("\n".join(lines))
    output = repair.output.strip("\n")
    if output.strip():
        if len(output) > REPAIR_OUTPUT_CHARS:
            output = "[... cut ...]\n" + output[-REPAIR_OUTPUT_CHARS:]
        sections.append(f"## The end of the test run's output\n```\n{output}\n```")
    if repair.files:
        sections.append(
            "## Files the failures point at (quoted first below)\n"
            + "\n".join(f"- {p}" for p in repair.files)
        )
    sections.append(f"## What this round must produce\n{REPAIR_RULES}")
    return sections


def _plan_lines(request: PhaseRequest) -> str:
    names = [p.name for p in request.plan]
    current = names.index(request.phase) if request.phase in names else len(names)
    lines = []
    for i, p in enumerate(request.plan):
        state = "done" if i < current else "this phase" if i == current else "later"
        lines.append(f"{i + 1}. {p.name} — {p.title} ({state})")
    return "\n".join(lines)


def _project_section(request: PhaseRequest) -> str:
    lines = ["## The project", f"Name: {request.project_name}"]
    entities = [e.name for e in request.schema.entities] if request.schema else []
    if entities:
        lines.append(f"Entities: {', '.join(entities)}")
    lines.append(DEFAULT_STACK)
    if request.schema is not None:
        schema = json.dumps(_tidy(msgspec.to_builtins(request.schema)), ensure_ascii=False)
        lines.append(f"\n### The schema\n```json\n{schema}\n```")
    if request.kind == "iterate":
        lines.append(
            "\n### The modification to make\n"
            "This is a new version of an existing project. The files so far started as the "
            "parent version's files. Change only what this modification needs in this "
            "phase's part of the project; every file you do not list stays as it is.\n\n"
            f"{request.prompt}"
        )
    elif request.prompt.strip():
        lines.append(f"\n### The user's prompt\n{request.prompt}")
    return "\n".join(lines)


def _tidy(value: Any) -> Any:
    """`value` without empty members (null, "", []), so the schema reads compactly."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items() if v not in (None, "", [])}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


@dataclass(frozen=True)
class ContextFile:
    """How one existing file appears in a prompt: whole, summarised or only listed."""

    path: str
    mode: Literal["full", "summary", "listed"]
    text: str


def context_files(request: PhaseRequest, context_chars: int) -> list[ContextFile]:
    """The files so far as the prompt shows them, within `context_chars`, in path order.

    The most relevant files are quoted first (PLAN.md, then files whose path matches the
    phase or a word of the prompt, then files this iteration changed); a file larger than
    LARGE_FILE_CHARS, or one that no longer fits the budget, is summarised; when even
    summaries no longer fit, it is only listed with its size and sha256.
    """
    files = request.files
    words = {w for w in re.findall(r"[a-z][a-z0-9_]{3,}", request.prompt.lower())}
    if request.schema is not None:
        words |= {e.name.lower() for e in request.schema.entities}
    hints = PHASE_PATH_HINTS.get(request.phase, ())

    def score(path: str) -> tuple[int, int, str]:
        lowered = path.lower()
        value = 0
        if lowered == "plan.md":
            value += 100
        if request.repair is not None and path in request.repair.files:
            value += 200
        if any(h in lowered for h in hints):
            value += 4
        if any(w in lowered for w in words):
            value += 2
        if request.kind == "iterate" and request.parent_files.get(path) != files[path]:
            value += 1
        return (-value, len(files[path]), path)

    shown: dict[str, ContextFile] = {}
    used = 0
    for path in sorted(files, key=score):
        content = files[path]
        full = _full_block(path, content)
        if len(content) <= LARGE_FILE_CHARS and used + len(full) <= context_chars:
            shown[path] = ContextFile(path, "full", full)
            used += len(full)
            continue
        summary = _summary_block(path, content)
        if used + len(summary) <= context_chars:
            shown[path] = ContextFile(path, "summary", summary)
            used += len(summary)
            continue
        shown[path] = ContextFile(path, "listed", _listed_line(path, content))
    return [shown[p] for p in sorted(shown)]


def _full_block(path: str, content: str) -> str:
    size = len(content.encode())
    return f"=== FILE {path} ({size:,} bytes) ===\n{content}\n=== END {path} ===\n"


def _summary_block(path: str, content: str) -> str:
    lines = content.splitlines()
    size = len(content.encode())
    head = lines[:SUMMARY_HEAD_LINES]
    tail = lines[max(SUMMARY_HEAD_LINES, len(lines) - SUMMARY_TAIL_LINES) :]
    hidden = len(lines) - len(head) - len(tail)
    # Very long lines would defeat the summary: cut each shown line.
    body = "\n".join(line[:300] for line in head)
    if hidden:
        body += f"\n[... {hidden:,} lines not shown ...]"
    if tail:
        body += "\n" + "\n".join(line[:300] for line in tail)
    return (
        f"=== SUMMARY {path} ({size:,} bytes, {len(lines):,} lines, "
        f"sha256 {content_sha256(content)}) ===\n{body}\n=== END {path} ===\n"
    )


def _listed_line(path: str, content: str) -> str:
    return f"- {path} ({len(content.encode()):,} bytes, sha256 {content_sha256(content)})"


def _files_section(request: PhaseRequest, context_chars: int) -> str:
    if not request.files:
        return "## The files so far\nNone yet: this is the first phase to write files."
    shown = context_files(request, context_chars)
    total = sum(len(c.encode()) for c in request.files.values())
    parts = [f"## The files so far ({len(request.files)} files, {total:,} bytes)"]
    if request.kind == "iterate":
        changed = sorted(p for p, c in request.files.items() if request.parent_files.get(p) != c)
        deleted = sorted(p for p in request.parent_files if p not in request.files)
        if changed:
            parts.append("Changed or added in this iteration so far: " + ", ".join(changed))
        if deleted:
            parts.append("Deleted in this iteration so far: " + ", ".join(deleted))
    summarised = [c.path for c in shown if c.mode == "summary"]
    listed = [c.path for c in shown if c.mode == "listed"]
    if summarised:
        parts.append(
            "Summarised (shown only by their first and last lines, size and sha256, "
            f"because they are large or the context is full): {', '.join(summarised)}. "
            "You cannot see their middle: do not rewrite them unless this phase needs to, "
            "and then write them complete."
        )
    if listed:
        parts.append(
            "Only listed (over the context budget, not shown at all): "
            + ", ".join(listed)
            + ". Do not rewrite them."
        )
    parts.extend(c.text for c in shown if c.mode != "listed")
    if listed:
        parts.append("Listed files:\n" + "\n".join(c.text for c in shown if c.mode == "listed"))
    return "\n".join(parts)
