"""The policy around each call to a chat model, shared by the gemini and openai providers.

`converse` runs one phase: a rate limit is waited out as the provider says, server errors
and timeouts are retried with backoff, an unreadable answer is asked again, and an answer
cut off at the output limit is continued with the remaining files — a truncated file is
never returned. Every call is reported (`llm.called`), every wait announced before it
starts (`llm.retrying`).

A provider only supplies a `ModelCall`: one streamed request that returns the text and its
finish, or raises `CallFailed` with what went wrong in words a person can act on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

import msgspec

from contracts import limits
from contracts.events import RetryReason
from contracts.phases import GeneratedFile, PhaseOutput
from services.common.logs import Logger, get_logger
from services.common.settings import Settings
from services.orchestrator.providers.answers import InvalidOutput, complete_files, decode_output
from services.orchestrator.providers.base import (
    ErrorKind,
    LlmCall,
    PhaseRequest,
    ProviderError,
    Reporter,
)
from services.orchestrator.providers.prompts import phase_prompt, system_instruction

log = get_logger(__name__)

# An answer may be asked again this many times when it is not valid JSON of the right shape.
INVALID_OUTPUT_RETRIES = 2
# An answer cut off at the output limit is continued at most this many times per phase.
MAX_CONTINUATIONS = 4
# A response stream longer than this is abandoned: no phase output can be that large
# (the whole generation is capped at limits.MAX_GENERATION_BYTES).
MAX_RESPONSE_BYTES = limits.MAX_GENERATION_BYTES + 16 * 1024 * 1024

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


@dataclass(eq=False)
class _Conversation:
    request: PhaseRequest
    reporter: Reporter
    provider: str
    label: str
    model: str
    call: ModelCall
    policy: CallPolicy
    calls: int = 0
    bytes_before: int = 0
    tokens_before: int = 0
    log: Logger = field(init=False)
    """The module's logger with the provider, phase and generation in every line."""

    def __post_init__(self) -> None:
        self.log = log.bind(
            label=self.label, phase=self.request.phase, generation_id=self.request.generation_id
        )

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
                self.log.info(
                    "{label} answer for phase {phase} of generation {generation_id} was cut "
                    "off at the output limit; continuing with the remaining files",
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
                self.log.warning(
                    "{label} answer for phase {phase} of generation {generation_id} could "
                    "not be read; asking again",
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
                self.log.warning(
                    "{label} call for phase {phase} of generation {generation_id} failed "
                    "({kind}); retrying in {delay} s",
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
        call = await self._called(attempt, latency_ms, outcome, result.tokens_in, result.tokens_out)
        self.log.info(
            "{label} call for phase {phase} of generation {generation_id} finished: {outcome}",
            **msgspec.structs.asdict(call),
        )

    async def _report_failure(self, exc: CallFailed, attempt: int, latency_ms: int) -> None:
        call = await self._called(attempt, latency_ms, exc.kind, exc.tokens_in, exc.tokens_out)
        self.log.warning(
            "{label} call for phase {phase} of generation {generation_id} failed: {outcome}",
            **msgspec.structs.asdict(call),
            message=exc.message,
        )

    async def _called(
        self, attempt: int, latency_ms: int, outcome: str, tokens_in: int, tokens_out: int
    ) -> LlmCall:
        """Report one call, answered or failed (`llm.called`); the call, for the log."""
        call = LlmCall(
            provider=self.provider,
            model=self.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=latency_ms,
            attempt=attempt,
            outcome=outcome,
        )
        await self.reporter.llm_called(call)
        return call

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
