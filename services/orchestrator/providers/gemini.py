"""The Gemini provider, on the async client of google-genai.

Each phase is one streamed `generate_content_stream` call asking for the phase output as
structured JSON (`response_schema`); the conversation around the calls — retries,
continuation after the output limit, reporting — is `conversation.converse`. The SDK's own
retries and automatic continuation are off, so Kiln's policy is the one that runs and
reports. The API key travels only in the `x-goog-api-key` header the SDK sets; it is never
logged, never put in an event, and scrubbed from any message a server sends back.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from google import genai
from google.genai import errors, types

from services.common.settings import Settings
from services.orchestrator.providers.answers import (
    gemini_response_schema,
)
from services.orchestrator.providers.base import ProviderError
from services.orchestrator.providers.chat import ChatModelProvider
from services.orchestrator.providers.conversation import (
    CallFailed,
    CallPolicy,
    CallResult,
    Finish,
    Progress,
    retry_after_seconds,
    scrub,
    shorten,
)

try:  # google-genai prefers httpx2 when it is installed
    import httpx2

    _TIMEOUTS: tuple[type[Exception], ...] = (
        TimeoutError,
        httpx.TimeoutException,
        httpx2.TimeoutException,
    )
    _TRANSPORT: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - depends on the installed extras
    _TIMEOUTS = (TimeoutError, httpx.TimeoutException)
    _TRANSPORT = (httpx.TransportError,)

LABEL = "Gemini"
_PER_DAY = re.compile(r"per\s*day|perday|daily", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)
_KEY_INVALID = re.compile(r"api key (not valid|invalid|expired)", re.IGNORECASE)


class GeminiProvider(ChatModelProvider):
    """Phases produced by a Gemini model through google-genai."""

    name = "gemini"
    label = LABEL

    def __init__(self, settings: Settings) -> None:
        key = settings.effective_gemini_key
        if not key:
            raise ProviderError(
                "The gemini provider is not configured: set GEMINI_API_KEY (or GOOGLE_API_KEY) "
                "for the orchestrator, or use the offline provider.",
                kind="auth",
            )
        self.settings = settings
        self.policy = CallPolicy.from_settings(settings)
        self._key = key
        self._client = genai.Client(
            vertexai=False,  # the Gemini API, whatever GOOGLE_GENAI_USE_VERTEXAI says
            api_key=key,
            # No `timeout` here: the SDK would also send it as X-Server-Timeout, a deadline
            # for the whole answer. KILN_LLM_TIMEOUT is an idle limit, applied per chunk.
            http_options=types.HttpOptions(
                base_url=settings.gemini_base_url,
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self._schema = types.Schema.model_validate(gemini_response_schema())

    def default_model(self) -> str:
        """The model of a request that names none (from the settings)."""
        return self.settings.gemini_model

    async def aclose(self) -> None:
        """Close the HTTP connections of the client."""
        await self._client.aio.aclose()

    async def _stream(self, model: str, system: str, prompt: str, progress: Progress) -> CallResult:
        config = types.GenerateContentConfig(
            system_instruction=system,
            response_mime_type="application/json",
            response_schema=self._schema,
            max_output_tokens=self.settings.llm_max_output_tokens,
            automatic_continuation=False,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        pieces: list[str] = []
        received = 0
        tokens_in = tokens_out = 0
        finish: str | None = None
        stream = await self._client.aio.models.generate_content_stream(
            model=model, contents=prompt, config=config
        )
        try:
            while True:
                try:
                    # An idle limit, not a deadline: a long answer may stream for minutes.
                    async with asyncio.timeout(self.settings.llm_timeout_s):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                usage = chunk.usage_metadata
                if usage is not None:
                    tokens_in = usage.prompt_token_count or tokens_in
                    tokens_out = (usage.candidates_token_count or 0) + (
                        usage.thoughts_token_count or 0
                    ) or tokens_out
                feedback = chunk.prompt_feedback
                if feedback is not None and feedback.block_reason:
                    raise CallFailed(
                        "blocked",
                        f"Gemini refused the prompt ({_enum_name(feedback.block_reason)}); "
                        "change the prompt or the schema and try again.",
                        tokens_in=tokens_in,
                    )
                if not chunk.candidates:
                    continue
                candidate = chunk.candidates[0]
                if candidate.content and candidate.content.parts:
                    for part in candidate.content.parts:
                        if part.text and not part.thought:
                            pieces.append(part.text)
                            received += len(part.text.encode())
                if candidate.finish_reason:
                    finish = _enum_name(candidate.finish_reason)
                await progress(received, tokens_out)
        except errors.APIError as exc:
            raise self._failure(exc, model, tokens_in, tokens_out) from None
        except _TIMEOUTS:
            raise CallFailed(
                "timeout",
                f"Gemini sent nothing for {self.settings.llm_timeout_s:g} s (KILN_LLM_TIMEOUT)",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from None
        except _TRANSPORT as exc:
            raise CallFailed(
                "server_error",
                f"the connection to Gemini failed ({type(exc).__name__})",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from None
        except errors.UnknownApiResponseError:
            raise CallFailed(
                "server_error",
                "Gemini sent a response that is not JSON",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        text = "".join(pieces)
        outcome: Finish
        if finish == "MAX_TOKENS":
            outcome = "max_tokens"
        elif finish in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
            outcome = "stop"
        else:
            outcome = "other"
        return CallResult(
            text=text,
            finish=outcome,
            finish_detail=f"finish reason {finish}" if finish else "",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )

    def _failure(
        self, exc: errors.APIError, model: str, tokens_in: int, tokens_out: int
    ) -> CallFailed:
        """What an API error means for the conversation, in words a person can act on."""
        code = int(exc.code or 0)
        status = exc.status or ""
        error = _error_body(exc.details)
        said = scrub(str(exc.message or error.get("message") or ""), self._key)
        said = said.strip().rstrip(".")
        short = shorten(said)
        where = f"{code} {status}".strip()
        if code == 429:
            daily = daily_quota(error)
            if daily is not None:
                return CallFailed(
                    "quota",
                    f"Gemini's daily quota for this API key is used up ({daily}). It resets "
                    "once a day: try again tomorrow, use a key with a higher quota, or use the "
                    "offline provider.",
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                )
            return CallFailed(
                "rate_limited",
                "rate limited by Gemini",
                retry_after_s=retry_delay(exc.response, error, said),
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            )
        if code in (401, 403) or _key_rejected(error, said):
            return CallFailed(
                "auth",
                f"The Gemini API key was rejected ({where}: {short}). Check GEMINI_API_KEY "
                "(or GOOGLE_API_KEY) of the orchestrator.",
            )
        if code == 404:
            return CallFailed(
                "not_found",
                f"Gemini does not know the model {model!r} ({where}: {short}). Name another "
                "model in the request or set KILN_GEMINI_MODEL.",
            )
        if code in (408, 504):
            return CallFailed(
                "timeout",
                f"Gemini timed out ({where})",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            )
        if code >= 500:
            return CallFailed(
                "server_error",
                f"Gemini answered {where}",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            )
        return CallFailed(
            "bad_request",
            f"Gemini refused the request ({where}: {short}). Nothing of this phase was saved.",
        )


def _error_body(details: Any) -> dict[str, Any]:
    """The `error` object of a Gemini error response (empty when there is none)."""
    if isinstance(details, list) and details:
        details = details[0]
    if not isinstance(details, dict):
        return {}
    error = details.get("error", details)
    return error if isinstance(error, dict) else {}


def daily_quota(error: dict[str, Any]) -> str | None:
    """The quota id or metric of a per-day quota this 429 names, or None for a rate limit.

    Gemini names the exhausted quota in a google.rpc.QuotaFailure (`quotaId` such as
    `GenerateRequestsPerDayPerProjectPerModel-FreeTier`) or in google.rpc.ErrorInfo
    metadata (`quota_limit`); a per-minute quota is a rate limit and is waited out.
    """
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                if not isinstance(violation, dict):
                    continue
                for key in ("quotaId", "quota_id", "quotaMetric", "description"):
                    value = str(violation.get(key) or "")
                    if _PER_DAY.search(value):
                        return str(violation.get("quotaId") or value)
        if kind.endswith("google.rpc.ErrorInfo"):
            metadata = detail.get("metadata") or {}
            if isinstance(metadata, dict):
                for key in ("quota_limit", "quota_id", "quotaLimit", "quotaId"):
                    value = str(metadata.get(key) or "")
                    if _PER_DAY.search(value):
                        return value
    message = str(error.get("message") or "")
    if re.search(r"per day|daily (quota|limit)", message, re.IGNORECASE):
        return "a per-day quota"
    return None


def retry_delay(response: Any, error: dict[str, Any], message: str) -> float | None:
    """Seconds to wait before the next call, as Gemini says: the Retry-After header, the
    google.rpc.RetryInfo `retryDelay`, or "Please retry in N s" in the message (the
    longest of those present); None when it says nothing."""
    delays: list[float] = []
    headers = getattr(response, "headers", None)
    if headers is not None:
        header = retry_after_seconds(headers.get("retry-after"))
        if header is not None:
            delays.append(header)
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(
            "google.rpc.RetryInfo"
        ):
            match = _DURATION.match(str(detail.get("retryDelay") or ""))
            if match:
                delays.append(float(match.group(1)))
    if not delays:
        match = _RETRY_IN.search(message)
        if match:
            value = float(match.group(1))
            delays.append(value / 1000 if match.group(2).lower() == "ms" else value)
    return max(delays) if delays else None


def _key_rejected(error: dict[str, Any], message: str) -> bool:
    """A 400 that means the key is wrong (Gemini answers a bad key with 400 API_KEY_INVALID)."""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("reason", "")).startswith("API_KEY_"):
            return True
    return bool(_KEY_INVALID.search(message))


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))
