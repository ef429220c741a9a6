"""The gateway's ASGI application: Litestar, with SSE streams run outside it."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from services.gateway.headers import with_security_headers
from services.gateway.middleware import measured
from services.gateway.plain_stream import RESPONSE_HEADERS, ROUTE, plain_stream
from services.gateway.protocol import CONNECTION
from services.gateway.sse import DETACHED, SERVER_SEND, WatchSession

_KEPT = ("type", "http_version", "method", "path")
"""What a detached stream's scope keeps: uvicorn reads `method` when the stream ends."""


class GatewayApp(Litestar):
    """Litestar, with SSE streams run outside it.

    A plain stream request (a token and nothing else; services/gateway/plain_stream.py) is
    started here without Litestar. Any other SSE request passes Litestar (routing, the key
    or token, the caps, the response start through every middleware, so status metrics and
    error handling see it) and then leaves its stream in the scope instead of sending its
    body. Once Litestar has returned, and with it every frame that held the request, the
    scope is emptied of all but what uvicorn still reads and the stream runs here, writing
    its chunks straight to the connection (`LimitedHttpProtocol.take_body`). An open stream
    then holds its connection, its session and its place in a log, not the request (B3),
    and a delivery costs one `transport.write` (B2). Every request is counted and timed
    here, outside the router, so unmatched ones are too, and every response gets its
    security headers here (services/gateway/headers.py)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        session = plain_stream(self.state.get("gateway"), scope)
        if session is not None:
            await self._run_plain(session, scope, receive, send)
            return
        scope[SERVER_SEND] = send
        try:
            await measured(super().__call__, scope, receive, with_security_headers(send))
        except BaseException:
            stream = scope.pop(DETACHED, None)
            if stream is not None and stream.on_close:
                stream.on_close()
            raise
        stream = scope.pop(DETACHED, None)
        if stream is not None:
            connection = scope.get(CONNECTION)
            kept = {key: scope[key] for key in _KEPT if key in scope}
            scope.clear()  # frees its table: Litestar's state, the request's caches
            scope.update(kept)
            await stream.run(send, receive, connection)

    @staticmethod
    async def _run_plain(session: WatchSession, scope: Any, receive: Any, send: Any) -> None:
        """Start a plain stream's response as the route would (counted, timed, with the
        security headers), then run it on the connection."""
        connection = scope.get(CONNECTION)
        session.transport = connection.transport if connection is not None else None
        scope["path_template"] = ROUTE
        session.stats.plain += 1

        async def start(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": RESPONSE_HEADERS})

        try:
            await measured(start, scope, receive, with_security_headers(send))
        except BaseException:
            if session.on_close:
                session.on_close()
            raise
        await session.run(send, receive, connection)
