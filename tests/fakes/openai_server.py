"""A fake OpenAI-compatible API: `POST /v1/chat/completions`, streamed (SSE, ending in
`data: [DONE]`) or not, answering as the per-phase script says (see `tests.fakes`)."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes import (
    Call,
    ErrorAnswer,
    FakeLLMServer,
    Response,
    TextAnswer,
    paced,
    phase_of,
)


class FakeOpenAI(FakeLLMServer):
    """Chat completions, scripted per phase. `url` + "/v1" is the base URL to configure."""

    provider = "openai"
    ignore_stream = False
    """Answer with one completion even when a stream is asked for (as some servers do)."""

    def env(self) -> dict[str, str]:
        """KILN_OPENAI_BASE_URL, KILN_OPENAI_API_KEY and KILN_OPENAI_MODEL for this fake."""
        return {
            "KILN_OPENAI_BASE_URL": self.base_url,
            "KILN_OPENAI_API_KEY": self.key,
            "KILN_OPENAI_MODEL": "fake-model",
        }

    @property
    def base_url(self) -> str:
        """The base URL a client is configured with."""
        return f"{self.url}/v1"

    async def handle(self, call: Call) -> Response:
        """Route, record and answer one request."""
        if call.method != "POST" or call.path != "/v1/chat/completions":
            return _json(404, _error(f"no route {call.path}", "invalid_request_error", None))
        messages = call.body.get("messages") or []
        call.system = "\n".join(
            str(m.get("content", "")) for m in messages if m.get("role") == "system"
        )
        call.prompt = "\n".join(
            str(m.get("content", "")) for m in messages if m.get("role") == "user"
        )
        call.phase = phase_of(call.prompt)
        answer = self.answer(self.next_step(call.phase), call.prompt)
        if isinstance(answer, ErrorAnswer):
            return self._error_response(answer)
        model = str(call.body.get("model", "fake"))
        tokens_in = (len(call.prompt) + len(call.system)) // 4
        if not call.body.get("stream") or self.ignore_stream:
            text = "".join(answer.pieces)
            return _json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": _finish(answer),
                        }
                    ],
                    "usage": _usage(tokens_in, len(text) // 4),
                },
            )
        return Response(
            200,
            {"content-type": "text/event-stream"},
            stream=lambda: paced(_events(answer, model, tokens_in), answer.delay_s),
        )

    def _error_response(self, answer: ErrorAnswer) -> Response:
        if answer.kind == "rate_limited":
            delay = answer.retry_after_s or 1.0
            return _json(
                429,
                _error(
                    "Rate limit reached for requests per minute (RPM). Please try again in "
                    f"{delay:g}s.",
                    "requests",
                    "rate_limit_exceeded",
                ),
                {"retry-after": f"{delay:g}"},
            )
        if answer.kind == "daily_quota":
            return _json(
                429,
                _error(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                ),
            )
        if answer.kind == "rejected":
            return _json(
                answer.status,
                _error(
                    f"Incorrect API key provided: {self.key}.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        return _json(
            answer.status,
            _error("The server had an error processing your request.", "server_error", None),
        )


def _finish(answer: TextAnswer) -> str:
    return "length" if answer.finish == "max_tokens" else "stop"


def _usage(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }


def _events(answer: TextAnswer, model: str, tokens_in: int) -> list[bytes]:
    def event(data: Any) -> bytes:
        return (
            b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
        )

    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model}
    events = []
    for index, piece in enumerate(answer.pieces):
        delta: dict[str, Any] = {"content": piece}
        if index == 0:
            delta["role"] = "assistant"
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        events.append(event({**base, "choices": [choice]}))
    text = "".join(answer.pieces)
    events.append(
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(answer)}]})
    )
    events.append(event({**base, "choices": [], "usage": _usage(tokens_in, len(text) // 4)}))
    events.append(event(b"[DONE]"))
    return events


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )
