"""Counts and times every HTTP request by method, route template and status (never by raw
path). It wraps the whole application, so requests that match no route (404, 405) are
counted too, as route `unmatched`.

A request is counted with the status its client was answered, which is not always the
application's: one whose body the HTTP protocol cut (services/gateway/protocol.py) counts
as the protocol's 408 or 413, and one whose client closed the connection before its
answer started counts as 499 ("client closed request", nginx's convention) rather than
the 500 that Litestar makes of the disconnect, which no client ever received. A slow-body
attack or an impatient client is then no server error on a dashboard or in an alert."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from litestar.types import Message, Receive, Scope, Send

from services.common import metrics
from services.common.logs import get_logger
from services.gateway.protocol import CONNECTION, REFUSED, LimitedHttpProtocol

log = get_logger(__name__)

ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_CLOSED = 499
"""The status a request is counted with when its client went away before its answer."""


async def measured(app: ASGICall, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one HTTP request through `app`, counting it and timing it to its response start."""
    started = time.perf_counter()
    status = 500
    answered_after: float | None = None
    gone = False

    async def observing_send(message: Message) -> None:
        nonlocal status, answered_after, gone
        if message["type"] == "http.response.start":
            status = message["status"]
            answered_after = time.perf_counter() - started
            gone = _closed(scope)
        await send(message)

    try:
        await app(scope, receive, observing_send)
    finally:
        if answered_after is None:
            gone = _closed(scope)
        route = scope.get("path_template") or "unmatched"
        method = scope.get("method", "")
        refused = scope.get(REFUSED)
        if isinstance(refused, int):
            status = refused  # the protocol answered, and logged it
        elif gone:
            log.info(
                "The client of {method} {route} closed the connection before its answer "
                "(the application's would have been {status}); counted as 499",
                method=method,
                route=route,
                status=status,
            )
            status = CLIENT_CLOSED
        metrics.http_requests.labels(method, route, str(status)).inc()
        elapsed = answered_after if answered_after is not None else time.perf_counter() - started
        metrics.http_seconds.labels(method, route).observe(elapsed)


def _closed(scope: Scope) -> bool:
    """Whether the request's connection is closed (or closing): nothing sent on it now
    reaches the client."""
    connection = scope.get(CONNECTION)
    return isinstance(connection, LimitedHttpProtocol) and connection.transport.is_closing()
