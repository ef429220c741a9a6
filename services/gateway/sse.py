"""One SSE connection: replay from the shared log, then follow it live.

The response is written straight to the ASGI `send` in batches: each time the watcher
wakes it sends every block the log gained as one chunk (one write per batch, not per
event). Disconnects are noticed through `receive`; keepalive comments come from the
hub's single shared tick, not a timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from services.common import metrics
from services.common.logs import get_logger
from services.gateway.headers import with_security_headers
from services.gateway.hub import GenerationLog, Hub
from services.gateway.middleware import measured
from services.gateway.outflow import OutflowBudget
from services.gateway.protocol import TRANSPORT

log = get_logger(__name__)

RETRY_MS = 2000


class StreamStats:
    """This gateway's own stream counters, for its tests and its shutdown log; `/metrics`
    exports the same through `metrics.sse_open` and `metrics.sse_events`."""

    def __init__(self) -> None:
        self.open = 0
        self.opened_total = 0
        self.events_sent = 0


SERVER_SEND = "kiln.server_send"
"""The scope key under which `GatewayApp` keeps the server's own ASGI `send`."""


class GatewayApp(Litestar):
    """Litestar, keeping the server's `send` in the scope so that an SSE stream's body
    goes straight to the server: every event otherwise passes through each middleware's
    send wrapper (about a fifth of the gateway's time under heavy fan-out). The response
    start still goes through them, so status metrics and error handling see it. Every
    request is counted and timed here, outside the router, so unmatched ones are too, and
    every response gets its security headers here (services/gateway/headers.py)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope[SERVER_SEND] = send
        await measured(super().__call__, scope, receive, with_security_headers(send))


class _SSEASGIResponse(ASGIResponse):
    # A stream has no length; Litestar would otherwise send `content-length: 0`.
    _should_set_content_length = False

    def __init__(self, session: WatchSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.server_send: Send | None = None

    async def send_body(self, send: Send, receive: Receive) -> None:
        await self.session.run(self.server_send or send, receive)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.server_send = cast("Send | None", scope.get(SERVER_SEND))
        self.session.transport = cast("asyncio.WriteTransport | None", scope.get(TRANSPORT))
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The session's own close already ran unless the response never got to its body.
            if self.session.on_close:
                self.session.on_close()


class SSEResponse(Response[bytes]):
    """A text/event-stream response driven by a WatchSession."""

    def __init__(self, session: WatchSession) -> None:
        super().__init__(
            content=b"",
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
                "Connection": "keep-alive",
            },
        )
        self.session = session

    def to_asgi_response(
        self, app: Any, request: Request[Any, Any, Any], **kwargs: Any
    ) -> ASGIResponse:
        headers = {**(kwargs.get("headers") or {}), **self.headers}
        return _SSEASGIResponse(
            self.session,
            status_code=200,
            media_type="text/event-stream",
            headers=headers,
            encoded_headers=kwargs.get("encoded_headers"),
            is_head_response=kwargs.get("is_head_response", False),
        )


class WatchSession:
    """Sends one generation's events to one client, from `after_seq` on, until the end.

    Each write is at most `budget.max_write_bytes` and is watched by the budget: a client
    that does not take it within the write deadline has its connection cut.
    """

    def __init__(
        self,
        hub: Hub,
        generation_id: str,
        after_seq: int,
        stats: StreamStats,
        on_close: Callable[[], None] | None = None,
        stopping: asyncio.Future[None] | None = None,
        budget: OutflowBudget | None = None,
    ) -> None:
        self.hub = hub
        self.generation_id = generation_id
        self.after_seq = after_seq
        self.stats = stats
        self.on_close = on_close
        self.stopping = stopping
        self.budget = budget or OutflowBudget()
        self.transport: asyncio.WriteTransport | None = None
        self.sent = 0
        self.write_started = 0.0
        self.pending = 0
        self.cut_reason: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    def buffered(self) -> int:
        """Bytes the connection holds that the client has not taken yet."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _bound_kernel_buffer(self) -> None:
        # The kernel would otherwise grow a stream's send buffer up to `tcp_wmem` (4 MiB)
        # for a client that does not read; one write's worth is plenty for SSE.
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.budget.max_write_bytes)

    def cut(self, reason: str) -> None:
        """Close the connection now, dropping what it holds (the budget calls this)."""
        self.cut_reason = f"the client did not read in time ({reason})"
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    async def _write(self, send: Send, body: bytes, more_body: bool = True) -> None:
        budget = self.budget
        self.pending = len(body)
        self.write_started = budget.clock()
        budget.writing[self] = None
        try:
            await send({"type": "http.response.body", "body": body, "more_body": more_body})
        finally:
            budget.writing.pop(self, None)

    def _wake(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self, send: Send, receive: Receive) -> None:
        """Write the stream until the terminal event, a disconnect or the gateway stopping."""
        self._bound_kernel_buffer()
        generation_log = self.hub.attach(self.generation_id)
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        disconnected.add_done_callback(self._wake)
        self.stats.open += 1
        self.stats.opened_total += 1
        metrics.sse_open.inc()
        reason = "client disconnected"
        log.info(
            "SSE stream opened for generation {generation_id}",
            generation_id=self.generation_id,
            after=self.after_seq,
        )
        try:
            await self._write(send, b"retry: %d\n\n" % RETRY_MS)
            reason = self.cut_reason or await self._pump(generation_log, send, disconnected)
        finally:
            disconnected.cancel()
            self.hub.detach(generation_log)
            self.stats.open -= 1
            metrics.sse_open.dec()
            if self.on_close:
                self.on_close()
            if self.cut_reason is None:
                with contextlib.suppress(Exception):
                    await self._write(send, b"", more_body=False)
            reason = self.cut_reason or reason
            log.info(
                "SSE stream closed for generation {generation_id}: {reason}",
                generation_id=self.generation_id,
                reason=reason,
                events_sent=self.sent,
            )

    async def _pump(
        self, generation_log: GenerationLog, send: Send, disconnected: asyncio.Future[None]
    ) -> str:
        last_sent = self.after_seq
        ticks = generation_log.ticks
        max_write = self.budget.max_write_bytes
        while True:
            if generation_log.failed is not None:
                return "the replay failed; the client will reconnect"
            # Positions are found by stream sequence, never kept as indexes: the log may
            # still be filling in from the replay below what was sent.
            position = generation_log.position_after(last_sent)
            end = len(generation_log.chunks)
            if position < end:
                while position < end:
                    chunk, stop = _take(generation_log.chunks, position, end, max_write)
                    await self._write(send, chunk)
                    if self.cut_reason is not None:
                        return self.cut_reason
                    self.sent += stop - position
                    self.stats.events_sent += stop - position
                    metrics.sse_events.inc(stop - position)
                    position = stop
                last_sent = generation_log.seqs[end - 1]
                continue
            if generation_log.replayed and generation_log.complete:
                return "the generation ended"
            if disconnected.done() or self.cut_reason is not None:
                return self.cut_reason or "client disconnected"
            if self.stopping is not None and self.stopping.done():
                return "the gateway is stopping"
            # The waiter also resolves at keepalive ticks, when the gateway stops, and (see
            # `run`) when the client disconnects: no task or `asyncio.wait` per wake-up.
            self._waiter = generation_log.next_change()
            await self._waiter
            if generation_log.ticks != ticks and not disconnected.done():
                ticks = generation_log.ticks
                await self._write(send, b": keepalive\n\n")


def _take(chunks: list[bytes], start: int, end: int, max_bytes: int) -> tuple[bytes, int]:
    """Join blocks from `start` into one write of at most `max_bytes` (or one block)."""
    size = 0
    stop = start
    while stop < end and (size == 0 or size + len(chunks[stop]) <= max_bytes):
        size += len(chunks[stop])
        stop += 1
    return b"".join(chunks[start:stop]), stop


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
