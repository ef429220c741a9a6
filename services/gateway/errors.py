"""The gateway's errors, and the one place that maps them (and Litestar's) to HTTP.

Every error is `application/problem+json` (RFC 9457) with a `detail` a person can act on
and the request's path as its `instance`. A client error is never a 5xx; an unexpected
error is a 500 with no traceback and a log line. `error_responses` documents the same
answers in the OpenAPI document, from this module too, so the two cannot drift apart.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import ResponseSpec

from services.common.broker import NOT_NOW
from services.common.eventwriter import LogUnavailable
from services.common.logs import get_logger, redactor

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

BODY_TOO_LARGE = "The request body is larger than the gateway accepts (KILN_MAX_BODY_BYTES)."
"""The detail of every 413, the application's and the HTTP protocol's (a body declared or
sent over the limit is refused there, before the application sees it)."""


class GatewayError(Exception):
    """An error with an HTTP status and a message for the person who made the request."""

    status = 500
    title = "Internal Server Error"

    RESERVED = frozenset({"type", "title", "status", "detail", "instance"})

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        clash = self.RESERVED & extra.keys()
        assert not clash, f"problem+json members cannot be extras: {sorted(clash)}"
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadRequest(GatewayError):
    """The request is malformed or breaks a rule; `problems` says which."""

    status, title = 400, "Bad Request"


class MalformedJson(BadRequest):
    """The body is not one JSON document (bad syntax, bytes that are not UTF-8, too deep)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The request body is malformed JSON ({reason}); send one JSON object.",
            problems=[{"location": "body", "message": f"malformed JSON: {reason}"}],
        )


WWW_AUTHENTICATE = 'Bearer realm="kiln"'


class Unauthorized(GatewayError):
    """No valid API key or SSE token; `WWW-Authenticate` names the scheme (RFC 9110)."""

    status, title = 401, "Unauthorized"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = WWW_AUTHENTICATE


class NotFound(GatewayError):
    """No such resource for this caller (another tenant's resources are not revealed)."""

    status, title = 404, "Not Found"


class Conflict(GatewayError):
    """The resource is in a state that does not allow the request."""

    status, title = 409, "Conflict"


class Unprocessable(GatewayError):
    """The request is well formed but cannot be taken as it is (an Idempotency-Key reused
    for another request)."""

    status, title = 422, "Unprocessable Content"


class PayloadTooLarge(GatewayError):
    """The request body is over the limit."""

    status, title = 413, "Payload Too Large"


class TooManyRequests(GatewayError):
    """A rate limit was hit; `Retry-After` says when to try again."""

    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = str(retry_after_s)


class Unavailable(GatewayError):
    """A dependency (NATS, the database, the projector) is not ready; retry shortly."""

    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = str(retry_after_s)


def problem(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[Any]:
    """A problem+json response to `request`; its `instance` is the request's path."""
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": redactor(detail),
        "instance": request.url.path,
        **extra,
    }
    return Response(
        content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers or {}
    )


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return problem(request, exc.status, exc.title, exc.detail, exc.headers, **exc.extra)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problems = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or "body"
            problems.append({"location": str(key), "message": str(item.get("message", ""))})
    detail = exc.detail or "The request is not valid"
    if _is_json_syntax(detail) or any(_is_json_syntax(p["message"]) for p in problems):
        reason = next((p["message"] for p in problems if p["message"]), detail)
        return _gateway_error(request, MalformedJson(reason))
    if detail.startswith("Validation failed for "):
        detail = "The request body is not valid"
    if problems:
        detail += ": " + "; ".join(
            f"{p['location']}: {p['message']}"
            if p["location"] not in ("body", "")
            else p["message"]
            for p in problems
        )
    return problem(request, 400, "Bad Request", detail, problems=problems)


_PHRASES = {s.value for s in HTTPStatus}


def _is_json_syntax(message: str) -> bool:
    """msgspec's words for bytes that are not JSON at all (not a wrong shape)."""
    return message.startswith(("Input data was truncated", "JSON is malformed"))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status == 413:
        return problem(
            request,
            413,
            "Payload Too Large",
            BODY_TOO_LARGE,
        )
    if status == 404 and isinstance(exc, NotFoundException):
        return problem(request, 404, "Not Found", f"No route or resource at {request.url.path}.")
    if status == 405:
        return problem(
            request,
            405,
            "Method Not Allowed",
            f"{request.method} is not allowed on {request.url.path}.",
            headers=dict(exc.headers or {}),
        )
    if isinstance(exc, NotAuthorizedException):
        return _gateway_error(request, Unauthorized(exc.detail))
    if status == 400 and _is_json_syntax(exc.detail):
        return _gateway_error(request, MalformedJson(exc.detail))
    detail = exc.detail if status < 500 else "The gateway could not handle the request."
    return problem(
        request, status, HTTPStatus(status).phrase if status in _PHRASES else "Error", detail
    )


BROKER_RETRY_AFTER_S = 2


def _failed_request(request: Request[Any, Any, Any], exc: Exception) -> dict[str, str]:
    """A request that failed and why, as a log line's fields (`method`, `path`, `error`)."""
    return {
        "method": request.method,
        "path": request.url.path,
        "error": f"{type(exc).__name__}: {exc}",
    }


def _broker_not_now(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """JetStream said "not now" (restarting, electing a leader, reconnecting): a 503 that
    says when to retry, logged as waiting, never a 500."""
    log.warning(
        "The message broker is not answering on {method} {path}; answered 503: {error}",
        **_failed_request(request, exc),
    )
    return _gateway_error(
        request,
        Unavailable(
            "The message broker is not answering right now (restarting or electing a "
            "leader); retry in a moment.",
            retry_after_s=BROKER_RETRY_AFTER_S,
        ),
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error(
        "Unhandled error on {method} {path}: {error}",
        **_failed_request(request, exc),
    )
    return problem(
        request,
        500,
        "Internal Server Error",
        "The gateway hit an unexpected error; it has been logged.",
    )


exception_handlers: dict[Any, Any] = {
    GatewayError: _gateway_error,
    LogUnavailable: _broker_not_now,
    **dict.fromkeys(NOT_NOW, _broker_not_now),
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}


class ProblemItem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with the request."""

    location: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An error answer (RFC 9457 problem details), as every 4xx and 5xx of the API is."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    problems: list[ProblemItem] | None = None
    """For 400: each rule the request breaks, and where."""


_WHEN: dict[int, str] = {
    400: "The request is malformed or breaks a rule; `problems` says which.",
    401: "No valid API key (or SSE token); `WWW-Authenticate: Bearer` names the scheme.",
    404: "No such resource for this caller (another user's resources are not revealed).",
    409: "The resource is in a state that does not allow the request.",
    413: BODY_TOO_LARGE,
    422: "The Idempotency-Key was already used for another request.",
    429: "A limit of the caller was reached; `Retry-After` says when to try again.",
    503: "A dependency (NATS, the database) is not answering right now; `Retry-After` says "
    "when to try again.",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a route that can answer these error statuses."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_WHEN[status],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }
