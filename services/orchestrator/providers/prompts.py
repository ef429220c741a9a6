"""The conversation with a chat model for one phase, shared by the gemini and openai providers.

Three parts, each used by both providers:

- **What is asked**: a system instruction with the rules every answer follows, and a prompt
  per phase built from the request — the schema, the user's prompt, the plan, what this
  phase must produce, the files so far within a context budget (large files summarised,
  and the prompt says which), the locked paths, and a correction when the previous output
  was rejected.
- **The shape of the answer**: the phase output (`files`, `deletions`, `summary`) as a JSON
  schema derived from `contracts.phases.PhaseOutput`, decoded with msgspec; from an answer
  cut off at the output limit, the files that were completed before the cut.
- **The policy around each call** (`converse`): a rate limit is waited out as the provider
  says, server errors and timeouts are retried with backoff, an unreadable answer is
  asked again, and an answer cut off at the output limit is continued with the remaining
  files — a truncated file is never returned. Every call is reported (`llm.called`), every
  wait announced before it starts (`llm.retrying`).

A provider only supplies a `ModelCall`: one streamed request that returns the text and
its finish, or raises `CallFailed` with what went wrong in words a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import msgspec

from contracts import limits
from contracts.codec import content_sha256
from contracts.events import RetryReason
from contracts.phases import PHASES, GeneratedFile, PhaseOutput, phase_plan
from services.common.logs import get_logger
from services.common.settings import Settings
from services.orchestrator.providers.base import (
    ErrorKind,
    PhaseRequest,
    ProviderError,
    Reporter,
)

log = get_logger(__name__)

# A file longer than this is summarised (first and last lines, size, sha256) even when the
# context budget would hold it: one huge file should not crowd out the rest of the project.
LARGE_FILE_CHARS = 24_000
SUMMARY_HEAD_LINES = 15
SUMMARY_TAIL_LINES = 5
# An answer may be asked again this many times when it is not valid JSON of the right shape.
INVALID_OUTPUT_RETRIES = 2
# An answer cut off at the output limit is continued at most this many times per phase.
MAX_CONTINUATIONS = 4
# A response stream longer than this is abandoned: no phase output can be that large
# (the whole generation is capped at limits.MAX_GENERATION_BYTES).
MAX_RESPONSE_BYTES = limits.MAX_GENERATION_BYTES + 16 * 1024 * 1024

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
}

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


# ---------------------------------------------------------------------------------------
# What is asked
# ---------------------------------------------------------------------------------------


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
    plan = phase_plan(request.phase)
    index = next(i for i, p in enumerate(PHASES) if p.name == request.phase)
    sections: list[str] = [
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


def _plan_lines(request: PhaseRequest) -> str:
    names = [p.name for p in request.plan]
    current = names.index(request.phase) if request.phase in names else -1
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


# ---------------------------------------------------------------------------------------
# The shape of the answer
# ---------------------------------------------------------------------------------------


def _inlined_schema() -> dict[str, Any]:
    """PhaseOutput's JSON schema with every $ref resolved."""
    schema = msgspec.json.schema(PhaseOutput)
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k not in ("title", "default")}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def output_json_schema() -> dict[str, Any]:
    """The phase output as a strict JSON schema (OpenAI `response_format`).

    Strict mode wants every property required and no others allowed, so optional
    properties are required-but-nullable.
    """

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if node.get("type") == "object":
                node["required"] = list(node.get("properties", {}))
                node["additionalProperties"] = False
            if "anyOf" in node and {"type": "null"} in node["anyOf"]:
                others = [o for o in node.pop("anyOf") if o != {"type": "null"}]
                node["type"] = [others[0]["type"], "null"]
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    return dict(strict(_inlined_schema()))


def gemini_response_schema() -> dict[str, Any]:
    """The phase output as a Gemini `response_schema` (the OpenAPI subset Gemini takes).

    Properties are ordered so that `files` comes first and each file's `path` precedes its
    `content`: an answer cut off at the output limit still has its completed files.
    """

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "anyOf" in node:
            others = [o for o in node["anyOf"] if o != {"type": "null"}]
            out = convert(others[0])
            out["nullable"] = True
        else:
            out["type"] = str(node["type"]).upper()
        if "description" in node:
            out["description"] = node["description"]
        if node.get("type") == "array":
            out["items"] = convert(node["items"])
        if node.get("type") == "object":
            props = node.get("properties", {})
            out["properties"] = {k: convert(v) for k, v in props.items()}
            out["property_ordering"] = list(props)
            out["required"] = [
                k for k, v in props.items() if "anyOf" not in v or k in node.get("required", [])
            ]
        return out

    return convert(_inlined_schema())


class InvalidOutput(ValueError):
    """An answer that is not a phase output; `problem` says why, briefly."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


_output_decoder = msgspec.json.Decoder(PhaseOutput)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?|\n?```\s*$")


def _strip_fences(text: str) -> str:
    """The answer without the Markdown fence some models wrap JSON in."""
    text = text.strip()
    if text.startswith("```"):
        text = _FENCE.sub("", text).strip()
    return text


def decode_output(text: str) -> PhaseOutput:
    """The phase output in `text`, or InvalidOutput saying what is wrong with it."""
    body = _strip_fences(text)
    if not body:
        raise InvalidOutput("the answer was empty")
    try:
        return _output_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidOutput(f"the JSON does not have the phase-output shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidOutput(f"the answer is not valid JSON: {exc}") from None


_FILES_KEY = re.compile(r'"files"\s*:\s*\[')


def complete_files(text: str) -> list[GeneratedFile]:
    """The files an answer cut off at the output limit completed before the cut.

    A file object counts only when it closed (its content string ended and its `}` came),
    so the file being written when the answer was cut is never among them.
    """
    body = _strip_fences(text)
    match = _FILES_KEY.search(body)
    if match is None:
        return []
    decoder = json.JSONDecoder()
    position = match.end()
    files: list[GeneratedFile] = []
    while True:
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if position >= len(body) or body[position] != "{":
            break
        try:
            value, position = decoder.raw_decode(body, position)
            files.append(msgspec.convert(value, GeneratedFile))
        except (ValueError, msgspec.ValidationError):
            break
    return files


# ---------------------------------------------------------------------------------------
# The policy around each call
# ---------------------------------------------------------------------------------------

FailureKind = Literal[
    "rate_limited",  # 429 with a delay to wait: retried
    "server_error",  # 5xx, a dropped connection, a garbled stream: retried with backoff
    "timeout",  # nothing received for too long: retried with backoff
    "quota",  # a daily quota: not retried
    "auth",  # the key was rejected: not retried
    "bad_request",  # the provider refused the request as invalid: not retried
    "not_found",  # the model (or endpoint) does not exist: not retried
    "blocked",  # the provider refused the content: not retried
    "too_large",  # the response grew past MAX_RESPONSE_BYTES: not retried
]
_RETRIED: dict[str, RetryReason] = {
    "rate_limited": "rate_limited",
    "server_error": "server_error",
    "timeout": "timeout",
}
_FINAL_KINDS: dict[str, ErrorKind] = {
    "quota": "quota",
    "auth": "auth",
    "too_large": "limits",
}


class CallFailed(Exception):
    """One call that failed. `message` is shown to the user as is: it never holds a key."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        retry_after_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out


Finish = Literal["stop", "max_tokens", "other"]
"""How a model stopped: naturally, at the output limit, or for another reason."""


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one successful call returned: the whole text and how the model stopped."""

    text: str
    finish: Finish
    finish_detail: str = ""
    tokens_in: int = 0
    tokens_out: int = 0


Progress = Callable[[int, int], Awaitable[None]]
"""`progress(bytes_received, tokens_received)` of the running call; it raises CallFailed
("too_large") when the response grows past MAX_RESPONSE_BYTES."""


class ModelCall(Protocol):
    """One streamed request to a model."""

    async def __call__(self, *, system: str, prompt: str, progress: Progress) -> CallResult:
        """The model's answer, or CallFailed."""
        ...


@dataclass(frozen=True)
class CallPolicy:
    """Retry and budget limits of the conversation (from the KILN_LLM_* settings)."""

    max_retries: int = 4
    retry_delay_s: float = 1.0
    max_retry_delay_s: float = 300.0
    context_chars: int = 200_000
    invalid_output_retries: int = INVALID_OUTPUT_RETRIES
    max_continuations: int = MAX_CONTINUATIONS
    max_response_bytes: int = MAX_RESPONSE_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> CallPolicy:
        """The policy the settings describe."""
        return cls(
            max_retries=max(0, settings.llm_max_retries),
            retry_delay_s=max(0.0, settings.llm_retry_delay_s),
            max_retry_delay_s=max(0.0, settings.llm_max_retry_delay_s),
            context_chars=max(0, settings.llm_context_chars),
        )


async def converse(
    request: PhaseRequest,
    reporter: Reporter,
    *,
    provider: str,
    label: str,
    model: str,
    call: ModelCall,
    policy: CallPolicy,
) -> PhaseOutput:
    """The phase output the model produces for `request`, or ProviderError.

    `label` names the provider in messages ("Gemini"). Cancellation is honoured between
    calls and after every wait; a cancelled task (the runner abandoning the call) stops at
    once without reporting anything more.
    """
    return await _Conversation(request, reporter, provider, label, model, call, policy).run()


class _Conversation:
    def __init__(
        self,
        request: PhaseRequest,
        reporter: Reporter,
        provider: str,
        label: str,
        model: str,
        call: ModelCall,
        policy: CallPolicy,
    ) -> None:
        self.request = request
        self.reporter = reporter
        self.provider = provider
        self.label = label
        self.model = model
        self.call = call
        self.policy = policy
        self.calls = 0
        self.bytes_before = 0
        self.tokens_before = 0

    async def run(self) -> PhaseOutput:
        done: dict[str, GeneratedFile] = {}
        continuations = 0
        invalid = 0
        note: str | None = None
        while True:
            prompt = phase_prompt(
                self.request, context_chars=self.policy.context_chars, done=done, note=note
            )
            result, attempt, latency_ms = await self._call_with_retries(prompt)
            if result.finish == "max_tokens":
                await self._report(result, attempt, latency_ms, "max_tokens")
                salvaged = [f for f in complete_files(result.text) if f.path not in done]
                continuations += 1
                if not salvaged:
                    raise ProviderError(
                        f"{self.label} reached its output limit in the {self.request.phase} "
                        "phase before finishing a single file, so the phase cannot be split "
                        "further. Nothing of this phase was saved; ask for smaller files, or "
                        "raise KILN_LLM_MAX_OUTPUT_TOKENS or use a model with a larger output "
                        "limit.",
                        kind="limits",
                    )
                if continuations > self.policy.max_continuations:
                    raise ProviderError(
                        f"{self.label} reached its output limit {continuations} times in the "
                        f"{self.request.phase} phase; the phase is too large to finish. "
                        "Nothing of this phase was saved.",
                        kind="limits",
                    )
                done.update((f.path, f) for f in salvaged)
                log.info(
                    "{label} answer for phase {phase} of generation {generation_id} was cut "
                    "off at the output limit; continuing with the remaining files",
                    label=self.label,
                    phase=self.request.phase,
                    generation_id=self.request.generation_id,
                    completed=len(salvaged),
                    continuation=continuations,
                )
                note = None
                continue
            try:
                if result.finish != "stop":
                    raise InvalidOutput(
                        f"the model stopped early ({result.finish_detail or result.finish})"
                    )
                output = decode_output(result.text)
            except InvalidOutput as exc:
                await self._report(result, attempt, latency_ms, "invalid_output")
                invalid += 1
                if invalid > self.policy.invalid_output_retries:
                    raise ProviderError(
                        f"{self.label}'s answer for the {self.request.phase} phase stayed "
                        f"unreadable after {invalid} tries ({exc.problem}). Nothing of this "
                        "phase was saved; the files of earlier phases are kept.",
                        kind="invalid_output",
                    ) from None
                note = f"Problem: {exc.problem}."
                await self.reporter.retrying(
                    reason="invalid_output",
                    delay_s=0.0,
                    attempt=self.calls + 1,
                    message=f"{self.label}'s answer could not be read ({exc.problem}); "
                    "asking again",
                )
                log.warning(
                    "{label} answer for phase {phase} of generation {generation_id} could "
                    "not be read; asking again",
                    label=self.label,
                    phase=self.request.phase,
                    generation_id=self.request.generation_id,
                    problem=exc.problem,
                    attempt=attempt,
                )
                self._check_cancelled()
                continue
            await self._report(result, attempt, latency_ms, "ok")
            return _merge(done, output)

    async def _call_with_retries(self, prompt: str) -> tuple[CallResult, int, int]:
        """A successful call (its result, attempt number and latency) or ProviderError."""
        failures = 0
        while True:
            self._check_cancelled()
            self.calls += 1
            attempt = self.calls
            started = time.monotonic()
            try:
                result = await self.call(
                    system=system_instruction(), prompt=prompt, progress=self._progress
                )
            except CallFailed as exc:
                latency_ms = int((time.monotonic() - started) * 1000)
                await self._report_failure(exc, attempt, latency_ms)
                reason = _RETRIED.get(exc.kind)
                if reason is None:
                    raise ProviderError(
                        exc.message, kind=_FINAL_KINDS.get(exc.kind, "provider")
                    ) from None
                failures += 1
                if failures > self.policy.max_retries:
                    raise ProviderError(
                        f"{exc.message}; gave up after {failures} tries "
                        f"(KILN_LLM_MAX_RETRIES={self.policy.max_retries}). Nothing of this "
                        "phase was saved; the files of earlier phases are kept.",
                        kind="provider",
                        retryable=True,
                    ) from None
                delay = self._delay(exc, failures)
                if delay > self.policy.max_retry_delay_s:
                    raise ProviderError(
                        f"{exc.message}, which asks to wait {delay:.0f} s: longer than "
                        f"KILN_LLM_MAX_RETRY_DELAY ({self.policy.max_retry_delay_s:.0f} s). "
                        "Try again later; the files of earlier phases are kept.",
                        kind="provider",
                        retryable=True,
                    ) from None
                await self.reporter.retrying(
                    reason=reason,
                    delay_s=delay,
                    attempt=attempt + 1,
                    message=f"{exc.message}; retrying in {_seconds(delay)}",
                )
                log.warning(
                    "{label} call for phase {phase} of generation {generation_id} failed "
                    "({kind}); retrying in {delay} s",
                    label=self.label,
                    phase=self.request.phase,
                    generation_id=self.request.generation_id,
                    kind=exc.kind,
                    delay=round(delay, 3),
                    attempt=attempt,
                )
                await asyncio.sleep(delay)
                continue
            latency_ms = int((time.monotonic() - started) * 1000)
            self.tokens_before += result.tokens_out
            return result, attempt, latency_ms

    def _delay(self, exc: CallFailed, failures: int) -> float:
        if exc.kind == "rate_limited" and exc.retry_after_s is not None:
            return max(0.0, exc.retry_after_s)
        backoff = self.policy.retry_delay_s * 2 ** (failures - 1)
        backoff = min(backoff, max(self.policy.retry_delay_s, 60.0))
        return backoff * random.uniform(0.8, 1.2)

    async def _progress(self, bytes_received: int, tokens_received: int) -> None:
        if bytes_received > self.policy.max_response_bytes:
            raise CallFailed(
                "too_large",
                f"{self.label}'s answer for the {self.request.phase} phase grew past "
                f"{self.policy.max_response_bytes:,} bytes and was abandoned; nothing of this "
                "phase was saved.",
            )
        await self.reporter.progress(
            bytes_received=self.bytes_before + bytes_received,
            tokens_received=self.tokens_before + tokens_received,
        )

    async def _report(
        self, result: CallResult, attempt: int, latency_ms: int, outcome: str
    ) -> None:
        self.bytes_before += len(result.text.encode())
        await self.reporter.llm_called(
            provider=self.provider,
            model=self.model,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
            latency_ms=latency_ms,
            attempt=attempt,
            outcome=outcome,
        )
        log.info(
            "{label} call for phase {phase} of generation {generation_id} finished: {outcome}",
            label=self.label,
            phase=self.request.phase,
            generation_id=self.request.generation_id,
            outcome=outcome,
            model=self.model,
            attempt=attempt,
            latency_ms=latency_ms,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
        )

    async def _report_failure(self, exc: CallFailed, attempt: int, latency_ms: int) -> None:
        await self.reporter.llm_called(
            provider=self.provider,
            model=self.model,
            tokens_in=exc.tokens_in,
            tokens_out=exc.tokens_out,
            latency_ms=latency_ms,
            attempt=attempt,
            outcome=exc.kind,
        )
        log.warning(
            "{label} call for phase {phase} of generation {generation_id} failed: {kind}",
            label=self.label,
            phase=self.request.phase,
            generation_id=self.request.generation_id,
            kind=exc.kind,
            message=exc.message,
            model=self.model,
            attempt=attempt,
            latency_ms=latency_ms,
        )

    def _check_cancelled(self) -> None:
        if self.reporter.cancelled():
            raise ProviderError("the generation was cancelled", kind="cancelled")


def _merge(done: dict[str, GeneratedFile], output: PhaseOutput) -> PhaseOutput:
    """The files saved before a cut-off and the final answer's, the latter winning."""
    if not done:
        return output
    files = dict(done)
    files.update((f.path, f) for f in output.files)
    return PhaseOutput(
        files=list(files.values()), deletions=output.deletions, summary=output.summary
    )


def _seconds(delay: float) -> str:
    """`1 s`, `0.25 s`, `37 s`: the delay as the page shows it."""
    if delay >= 10 or float(delay).is_integer():
        return f"{delay:.0f} s"
    return f"{delay:.2g} s"


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced by `***` (for messages quoted from a server)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def shorten(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters (for quoting a server's message)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
