"""One SSE connection: replay from the shared log, then follow it live.

The response is written in batches, straight to the connection's transport once the
response has started: each time the watcher wakes it sends every block the log gained as
one chunk (one write per batch, not per event). The connection tells of a disconnect;
keepalive comments come from the hub's single shared tick, not a timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from services.common import metrics
from services.common.logs import get_logger
from services.gateway.hub import GenerationLog, Hub
from services.gateway.outflow import OutflowBudget
from services.gateway.protocol import CONNECTION, LimitedHttpProtocol

log = get_logger(__name__)

RETRY_MS = 2000
KEEPALIVE = b": keepalive\n\n"


class StreamStats:
    """This gateway's own stream counters, for its tests and its shutdown log; `/metrics`
    exports the same through `metrics.sse_open` and `metrics.sse_events`."""

    def __init__(self) -> None:
        self.open = 0
        self.opened_total = 0
        self.events_sent = 0
        self.direct = 0
        """Streams whose body went straight to the connection (`LimitedHttpProtocol`)."""
        self.plain = 0
        """Streams started before Litestar (services/gateway/plain_stream.py)."""


SERVER_SEND = "kiln.server_send"
"""The scope key under which `GatewayApp` keeps the server's own ASGI `send`."""

DETACHED = "kiln.detached_stream"
"""The scope key under which an SSE response leaves its stream for `GatewayApp`
(services/gateway/asgi.py) to run once Litestar has returned."""


class _SSEASGIResponse(ASGIResponse):
    # A stream has no length; Litestar would otherwise send `content-length: 0`.
    _should_set_content_length = False

    def __init__(self, session: WatchSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.detached = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session
        connection = cast("LimitedHttpProtocol | None", scope.get(CONNECTION))
        session.transport = connection.transport if connection is not None else None
        try:
            await self.start_response(send=send)
            if self.is_head_response:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif SERVER_SEND in scope:
                scope[DETACHED] = session  # type: ignore[literal-required]
                self.detached = True  # GatewayApp runs it once Litestar has returned
            else:
                await session.run(send, receive, connection)
            await self.after_response()
        finally:
            # The session's own close already ran unless the response never got to its body.
            if not self.detached and session.on_close:
                session.on_close()


STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
"""An SSE response's own headers, besides its content type (services/gateway/plain_stream.py
sends the same)."""


class SSEResponse(Response[bytes]):
    """A text/event-stream response driven by a WatchSession."""

    def __init__(self, session: WatchSession) -> None:
        super().__init__(content=b"", media_type="text/event-stream", headers=STREAM_HEADERS)
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


@dataclass(slots=True, eq=False)
class WatchSession:
    """Sends one generation's events to one client, from `after_seq` on, until the end.

    Each write is at most `budget.max_write_bytes` and is watched by the budget: a client
    that does not take it within the write deadline has its connection cut. On Kiln's own
    connection (`LimitedHttpProtocol`) the chunks go straight to its transport, framed
    once; a write waits only while the transport has paused writing (uvicorn's flow
    control), and only such a wait is watched. Elsewhere (a test client) each write is an
    ASGI message.
    """

    hub: Hub
    generation_id: str
    after_seq: int
    stats: StreamStats
    on_close: Callable[[], None] | None = None
    stopping: asyncio.Future[None] | None = None
    budget: OutflowBudget = field(default_factory=OutflowBudget)
    transport: asyncio.WriteTransport | None = field(default=None, init=False)
    sent: int = field(default=0, init=False)
    write_started: float = field(default=0.0, init=False)
    pending: int = field(default=0, init=False)
    cut_reason: str | None = field(default=None, init=False)
    disconnected: bool = field(default=False, init=False)
    _connection: LimitedHttpProtocol | None = field(default=None, init=False)
    _waiter: asyncio.Future[None] | None = field(default=None, init=False)

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

    def _lost(self, _: object = None) -> None:
        self.disconnected = True
        self._wake()

    def _wake(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _put(self, chunks: list[bytes], start: int, stop: int, size: int) -> bool:
        """Write `chunks[start:stop]` (`size` bytes) straight to the connection as one HTTP
        chunk; False, writing nothing, when it has to wait (or the body is not taken)."""
        connection = self._connection
        if connection is None or connection.flow.write_paused:
            return False
        transport = connection.transport
        if transport.is_closing():
            return True  # the client is gone: `_lost` ends the stream
        if stop - start == 1:
            transport.write(b"%x\r\n%s\r\n" % (size, chunks[start]))
        else:
            # No copy of the blocks: the transport sends them as they are.
            transport.writelines([b"%x\r\n" % size, *chunks[start:stop], b"\r\n"])
        return True

    async def _write(self, send: Send, body: bytes, more_body: bool = True) -> None:
        """One write that may wait, watched by the budget meanwhile."""
        budget = self.budget
        self.pending = len(body)
        self.write_started = budget.clock()
        budget.writing[self] = None
        try:
            connection = self._connection
            if connection is None or not more_body:
                # The last message goes through uvicorn, which ends the chunked body and
                # finishes the request.
                await send({"type": "http.response.body", "body": body, "more_body": more_body})
            else:
                await connection.flow.drain()
                while not self._put([body], 0, 1, len(body)):
                    await connection.flow.drain()
        finally:
            budget.writing.pop(self, None)

    async def run(
        self, send: Send, receive: Receive, connection: LimitedHttpProtocol | None = None
    ) -> None:
        """Write the stream until the terminal event, a disconnect or the gateway stopping;
        its response has started. On `connection` (Kiln's protocol), with `send` the
        server's own, the chunks go straight to the transport and the protocol tells of a
        disconnect; otherwise each is sent with `send` and a disconnect is heard through
        `receive`."""
        self._bound_kernel_buffer()
        generation_log = self.hub.attach(self.generation_id)
        listening: asyncio.Future[None] | None = None
        if connection is not None and connection.take_body(send, self._lost):
            self._connection = connection
            self.stats.direct += 1
        else:
            listening = asyncio.ensure_future(_wait_for_disconnect(receive))
            listening.add_done_callback(self._lost)
        self.stats.open += 1
        self.stats.opened_total += 1
        metrics.sse_open.inc()
        reason = "client disconnected"
        # At DEBUG: the access log's line for the GET already tells of the opening (its
        # path names the generation), and the close line below tells how it went. One line
        # fewer per stream when hundreds join at once (#19 (e)).
        log.debug(
            "SSE stream opened for generation {generation_id}",
            generation_id=self.generation_id,
            after=self.after_seq,
        )
        try:
            preamble = b"retry: %d\n\n" % RETRY_MS
            if not self._put([preamble], 0, 1, len(preamble)):
                await self._write(send, preamble)
            reason = self.cut_reason or await self._pump(generation_log, send)
        finally:
            if listening is not None:
                listening.cancel()
            if self._connection is not None:
                self._connection.release_body()
            self.hub.detach(generation_log)
            self.stats.open -= 1
            metrics.sse_open.dec()
            if self.on_close:
                self.on_close()
            if self.cut_reason is None:
                with contextlib.suppress(Exception):
                    await self._write(send, b"", more_body=False)
            reason = self.cut_reason or reason
            self._connection = None
            log.info(
                "SSE stream closed for generation {generation_id}: {reason}",
                generation_id=self.generation_id,
                reason=reason,
                events_sent=self.sent,
            )

    async def _pump(self, generation_log: GenerationLog, send: Send) -> str:
        last_sent = self.after_seq
        ticks = generation_log.ticks
        max_write = self.budget.max_write_bytes
        chunks = generation_log.chunks
        while True:
            if generation_log.failed is not None:
                return "the replay failed; the client will reconnect"
            # Positions are found by stream sequence, never kept as indexes: the log may
            # still be filling in from the replay below what was sent.
            position = generation_log.position_after(last_sent)
            end = len(chunks)
            if position < end:
                while position < end:
                    stop, size = _take(chunks, position, end, max_write)
                    if not self._put(chunks, position, stop, size):
                        await self._write(send, b"".join(chunks[position:stop]))
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
            if self.disconnected or self.cut_reason is not None:
                return self.cut_reason or "client disconnected"
            if self.stopping is not None and self.stopping.done():
                return "the gateway is stopping"
            # The waiter also resolves at keepalive ticks, when the gateway stops, and (see
            # `run`) when the client disconnects: no task or `asyncio.wait` per wake-up.
            self._waiter = generation_log.next_change()
            await self._waiter
            self._waiter = None
            if generation_log.ticks != ticks and not self.disconnected:
                ticks = generation_log.ticks
                if not self._put([KEEPALIVE], 0, 1, len(KEEPALIVE)):
                    await self._write(send, KEEPALIVE)


def _take(chunks: list[bytes], start: int, end: int, max_bytes: int) -> tuple[int, int]:
    """The end and the size of one write from `start`: blocks up to `max_bytes` (or one)."""
    size = 0
    stop = start
    while stop < end and (size == 0 or size + len(chunks[stop]) <= max_bytes):
        size += len(chunks[stop])
        stop += 1
    return stop, size


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
