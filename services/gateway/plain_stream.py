"""The common SSE request, served before Litestar: `GET /generations/{id}/stream?token=…`.

A browser's EventSource, the CLI and the SDK open a stream with the token from the POST
and nothing else. Such a request needs none of what Litestar does for a route (parameter
parsing, dependencies, the API key, its error handling): its token is checked, the stream
admitted by the gateway's caps and its response started here, the same way the route
would (the same status, headers and metrics). When a thousand browsers open their
streams at once that is the work of each request's start, and the route cost more than
the rest of it (B4).

Every other request, and every one this path cannot serve as it is, goes to Litestar,
which answers it as before: a resume (`Last-Event-ID`), an API key, a query with more
than the token, a HEAD, a token that does not verify, a stream the caps refuse. The
route's errors (problem+json 400, 401, 404, 429, 503) and their logs stay in one place.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from services.gateway.quotas import admit_stream
from services.gateway.sse import STREAM_HEADERS, WatchSession
from services.gateway.tokens import TokenInvalid

if TYPE_CHECKING:
    from litestar.types import Scope

    from services.gateway.state import Gateway

ROUTE = "/generations/{generation_id}/stream"
"""The route template the stream is counted under in the metrics, as through Litestar."""

_PATH = re.compile(r"/generations/([A-Za-z0-9_-]{1,64})/stream")
_TOKEN = re.compile(rb"token=([A-Za-z0-9_.%-]+)")
_RESUME = b"last-event-id"

RESPONSE_HEADERS = [
    *((name.lower().encode(), value.encode()) for name, value in STREAM_HEADERS.items()),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
"""The route's response headers as Litestar encodes them (services/gateway/sse.py
`SSEResponse`); the security headers are added to every response on its way out."""


def plain_stream(gateway: Gateway | None, scope: Scope) -> WatchSession | None:
    """The admitted session of a plain stream request, or None to let Litestar answer it.

    A session returned holds its places in the caps: its `on_close` releases them, and the
    caller must run it or call that."""
    if gateway is None or scope.get("method") != "GET":
        return None
    path = _PATH.fullmatch(scope["path"])
    query = _TOKEN.fullmatch(scope.get("query_string", b""))
    if path is None or query is None:
        return None
    if any(name == _RESUME for name, _ in scope["headers"]):
        return None
    generation_id = path.group(1)
    try:
        owner = gateway.tokens.verify(unquote(query.group(1).decode()), generation_id)
    except TokenInvalid:
        return None
    if gateway.outflow.full or gateway.stream_slots.full(owner):
        return None  # the route refuses it, and counts the refusal once
    return WatchSession(
        gateway.hub,
        generation_id,
        0,
        gateway.stats,
        on_close=admit_stream(gateway.outflow, gateway.stream_slots, owner),
        stopping=gateway.stopping,
        budget=gateway.outflow,
    )
