"""Counts every HTTP request by method, route template and status (never by raw path)."""

from __future__ import annotations

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.common import metrics


def request_metrics(app: ASGIApp) -> ASGIApp:
    """An ASGI middleware factory for Litestar's `middleware=[...]`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, counting_send)
        finally:
            route = scope.get("path_template") or "unmatched"
            metrics.http_requests.labels(scope.get("method", ""), route, str(status)).inc()

    return middleware
