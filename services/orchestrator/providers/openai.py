"""The openai provider: any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM,
LM Studio, llama.cpp server), configured by base URL, key and model.

Each phase is one streamed `POST {base}/chat/completions` asking for the phase output as
structured JSON (`response_format` with a strict JSON schema), read with httpx and
httpx-sse; the conversation around the calls — retries, continuation after the output
limit, reporting — is `conversation.converse`, shared with the gemini provider. The key travels
only in the Authorization header; it is never logged, never put in an event, and scrubbed
from any message a server sends back.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource

from services.common.settings import Settings
from services.orchestrator.providers.answers import (
    output_json_schema,
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

LABEL = "The OpenAI-compatible endpoint"
_ENDPOINT = "the OpenAI-compatible endpoint"
_PER_DAY = re.compile(r"per day|\(RPD\)|\(TPD\)|daily", re.IGNORECASE)
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})


class OpenAIProvider(ChatModelProvider):
    """Phases produced by a model behind an OpenAI-compatible chat-completions API."""

    name = "openai"
    label = LABEL

    def __init__(self, settings: Settings) -> None:
        if not settings.openai_base_url:
            raise ProviderError(
                "The openai provider is not configured: set KILN_OPENAI_BASE_URL (and "
                "KILN_OPENAI_API_KEY and KILN_OPENAI_MODEL as the endpoint needs) for the "
                "orchestrator, or use the offline provider.",
                kind="auth",
            )
        self.settings = settings
        self.policy = CallPolicy.from_settings(settings)
        self._key = settings.openai_api_key
        base = settings.openai_base_url.rstrip("/") + "/"
        parts = urlsplit(base)
        # Where the endpoint is, for messages: never its user info or query.
        self.endpoint = f"{parts.scheme}://{parts.hostname or ''}" + (
            f":{parts.port}" if parts.port else ""
        )
        headers = {"Accept": "text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        timeout = httpx.Timeout(settings.llm_timeout_s, connect=min(10.0, settings.llm_timeout_s))
        self._client = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout)
        self._schema = output_json_schema()

    def default_model(self) -> str:
        """The model of a request that names none (from the settings)."""
        return self.settings.openai_model

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    def _body(self, model: str, system: str, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "phase_output", "strict": True, "schema": self._schema},
            },
        }
        if self.settings.llm_max_output_tokens:
            body["max_tokens"] = self.settings.llm_max_output_tokens
        return body

    async def _stream(self, model: str, system: str, prompt: str, progress: Progress) -> CallResult:
        pieces: list[str] = []
        received = 0
        tokens_in = tokens_out = 0
        finish: str | None = None
        try:
            async with self._client.stream(
                "POST", "chat/completions", json=self._body(model, system, prompt)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._failure(
                        response.status_code, response.headers, _json(response), model
                    )
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    # A server that ignores `stream` answers with one completion.
                    await response.aread()
                    data = _json(response)
                    choice = (data.get("choices") or [{}])[0]
                    text = str((choice.get("message") or {}).get("content") or "")
                    usage = data.get("usage") or {}
                    await progress(len(text.encode()), int(usage.get("completion_tokens") or 0))
                    return _result(
                        text,
                        choice.get("finish_reason"),
                        int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0),
                    )
                async for event in EventSource(response).aiter_sse():
                    if event.data.strip() == "[DONE]":
                        break
                    try:
                        data = json.loads(event.data)
                    except ValueError:
                        raise CallFailed(
                            "server_error",
                            f"{LABEL} sent a stream event that is not JSON",
                            tokens_in=tokens_in,
                            tokens_out=tokens_out,
                        ) from None
                    if not isinstance(data, dict):
                        continue
                    if data.get("error"):
                        status = _status_of(data["error"])
                        raise self._failure(status, response.headers, data, model)
                    usage = data.get("usage") or {}
                    tokens_in = int(usage.get("prompt_tokens") or tokens_in)
                    tokens_out = int(usage.get("completion_tokens") or tokens_out)
                    for choice in data.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            pieces.append(str(piece))
                            received += len(str(piece).encode())
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                    await progress(received, tokens_out)
        except httpx.TimeoutException:
            raise CallFailed(
                "timeout",
                f"{LABEL} at {self.endpoint} sent nothing for "
                f"{self.settings.llm_timeout_s:g} s (KILN_LLM_TIMEOUT)",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from None
        except httpx.TransportError as exc:
            raise CallFailed(
                "server_error",
                f"the connection to {_ENDPOINT} at {self.endpoint} failed ({type(exc).__name__})",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from None
        return _result("".join(pieces), finish, tokens_in, tokens_out)

    def _failure(
        self, status: int, headers: httpx.Headers, body: dict[str, Any], model: str
    ) -> CallFailed:
        """What an error answer means for the conversation, in words a person can act on."""
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        assert isinstance(error, dict)
        said = scrub(str(error.get("message") or error.get("detail") or ""), self._key)
        said = shorten(said.strip().rstrip("."))
        code = str(error.get("code") or error.get("type") or "")
        where = f"{status}" + (f" {code}" if code else "")
        if status == 429:
            if code in _QUOTA_CODES or error.get("type") in _QUOTA_CODES or _PER_DAY.search(said):
                return CallFailed(
                    "quota",
                    f"{LABEL} at {self.endpoint} says the quota of this API key is used up "
                    f"({where}: {said}). Try again when it resets, use another key, or use the "
                    "offline provider.",
                )
            delay = retry_after_seconds(headers.get("retry-after"))
            millis = headers.get("retry-after-ms")
            if delay is None and millis:
                try:
                    delay = float(millis) / 1000
                except ValueError:
                    delay = None
            return CallFailed("rate_limited", f"rate limited by {_ENDPOINT}", retry_after_s=delay)
        if status in (401, 403) or code == "invalid_api_key":
            return CallFailed(
                "auth",
                f"The API key was rejected by {_ENDPOINT} at {self.endpoint} "
                f"({where}: {said}). Check KILN_OPENAI_API_KEY of the orchestrator.",
            )
        if status == 404:
            return CallFailed(
                "not_found",
                f"{LABEL} at {self.endpoint} does not know the model {model!r} or the path "
                f"chat/completions ({where}: {said}). Check KILN_OPENAI_BASE_URL (it usually "
                "ends in /v1) and KILN_OPENAI_MODEL.",
            )
        if status in (408, 504):
            return CallFailed("timeout", f"{LABEL} at {self.endpoint} timed out ({where})")
        if status >= 500:
            return CallFailed("server_error", f"{LABEL} at {self.endpoint} answered {where}")
        return CallFailed(
            "bad_request",
            f"{LABEL} at {self.endpoint} refused the request ({where}: {said}). Nothing of "
            "this phase was saved.",
        )


def _result(text: str, finish: Any, tokens_in: int, tokens_out: int) -> CallResult:
    reason = str(finish or "stop")
    outcome: Finish
    if reason == "length":
        outcome = "max_tokens"
    elif reason in ("stop", "eos", "end_turn"):
        outcome = "stop"
    else:
        outcome = "other"
    return CallResult(
        text=text,
        finish=outcome,
        finish_detail=f"finish reason {reason}",
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"error": {"message": response.text[:500]}}
    return data if isinstance(data, dict) else {"error": {"message": str(data)[:500]}}


def _status_of(error: Any) -> int:
    """The HTTP status an in-stream error stands for (500 when it does not say)."""
    if isinstance(error, dict):
        for key in ("status", "code", "status_code"):
            value = error.get(key)
            if isinstance(value, int) and 400 <= value < 600:
                return value
    return 500
