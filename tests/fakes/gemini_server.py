"""A fake Gemini API: `POST /{version}/models/{model}:streamGenerateContent?alt=sse` and
`:generateContent`, answering as the per-phase script says (see `tests.fakes`)."""

from __future__ import annotations

import json
import re
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

_ROUTE = re.compile(
    r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<action>streamGenerateContent|generateContent)$"
)


class FakeGemini(FakeLLMServer):
    """The Gemini API's generateContent, streamed or not, scripted per phase."""

    provider = "gemini"

    def env(self) -> dict[str, str]:
        """GEMINI_API_KEY and KILN_GEMINI_BASE_URL for this fake."""
        return {"GEMINI_API_KEY": self.key, "KILN_GEMINI_BASE_URL": self.url}

    async def handle(self, call: Call) -> Response:
        """Route, record and answer one request."""
        match = _ROUTE.match(call.path)
        if call.method != "POST" or match is None:
            return _json(404, _error(404, "NOT_FOUND", f"no route {call.path}"))
        call.prompt = _text(call.body.get("contents"))
        call.system = _text(call.body.get("systemInstruction"))
        call.phase = phase_of(call.prompt)
        answer = self.answer(self.next_step(call.phase), call.prompt)
        if isinstance(answer, ErrorAnswer):
            return self._error_response(answer)
        model = match.group("model")
        tokens_in = (len(call.prompt) + len(call.system)) // 4
        if match.group("action") == "generateContent":
            text = "".join(answer.pieces)
            return _json(200, _chunk(text, answer, model, tokens_in, len(text) // 4, last=True))
        return Response(
            200,
            {"content-type": "text/event-stream"},
            stream=lambda: paced(_events(answer, model, tokens_in), answer.delay_s),
        )

    def _error_response(self, answer: ErrorAnswer) -> Response:
        if answer.kind == "rate_limited":
            delay = answer.retry_after_s or 1.0
            body = _error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. "
                "* Quota exceeded for metric: generativelanguage.googleapis.com/"
                "generate_content_free_tier_requests, limit: 10, model: fake",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                "quotaValue": "10",
                            }
                        ],
                    },
                    *(
                        []
                        if answer.header
                        else [
                            {
                                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{delay:g}s",
                            }
                        ]
                    ),
                ],
            )
            headers = {"retry-after": f"{delay:g}"} if answer.header else {}
            return _json(429, body, headers)
        if answer.kind == "daily_quota":
            return _json(
                429,
                _error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing "
                    "details. Please retry in 36.4s.",
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": "generativelanguage.googleapis.com/"
                                    "generate_content_free_tier_requests",
                                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                    "quotaValue": "250",
                                }
                            ],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36s"},
                    ],
                ),
            )
        if answer.kind == "rejected":
            return _json(
                answer.status,
                _error(
                    answer.status,
                    {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}.get(
                        answer.status, "INVALID_ARGUMENT"
                    ),
                    f"API key not valid: {self.key}. Please pass a valid API key.",
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                        }
                    ],
                ),
            )
        return _json(
            answer.status, _error(answer.status, "INTERNAL", "An internal error occurred.")
        )


def _events(answer: TextAnswer, model: str, tokens_in: int) -> list[bytes]:
    events = []
    sent = 0
    for index, piece in enumerate(answer.pieces):
        sent += len(piece)
        last = index == len(answer.pieces) - 1
        chunk = _chunk(piece, answer, model, tokens_in, sent // 4, last=last)
        events.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    return events


def _chunk(
    text: str, answer: TextAnswer, model: str, tokens_in: int, tokens_out: int, *, last: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if last:
        candidate["finishReason"] = "MAX_TOKENS" if answer.finish == "max_tokens" else "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": tokens_in,
            "candidatesTokenCount": tokens_out,
            "totalTokenCount": tokens_in + tokens_out,
        },
        "modelVersion": model,
    }


def _error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def _text(content: Any) -> str:
    """The text parts of a Content (or list of Contents), joined."""
    if isinstance(content, list):
        return "\n".join(_text(c) for c in content)
    if isinstance(content, dict):
        return "\n".join(str(p.get("text", "")) for p in content.get("parts") or [])
    return str(content or "")
