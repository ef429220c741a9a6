"""Counts and times every HTTP request by method, route template and status (never by raw
path). It wraps the whole application, so requests that match no route (404, 405) are
counted too, as route `unmatched`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from litestar.types import Message, Receive, Scope, Send

from services.common import metrics

ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]


async def measured(app: ASGICall, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one HTTP request through `app`, counting it and timing it to its response start."""
    started = time.perf_counter()
    status = 500
    answered_after: float | None = None

    async def observing_send(message: Message) -> None:
        nonlocal status, answered_after
        if message["type"] == "http.response.start":
            status = message["status"]
            answered_after = time.perf_counter() - started
        await send(message)

    try:
        await app(scope, receive, observing_send)
    finally:
        route = scope.get("path_template") or "unmatched"
        method = scope.get("method", "")
        metrics.http_requests.labels(method, route, str(status)).inc()
        elapsed = answered_after if answered_after is not None else time.perf_counter() - started
        metrics.http_seconds.labels(method, route).observe(elapsed)
