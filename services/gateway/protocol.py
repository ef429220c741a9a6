"""The gateway's HTTP/1.1 connection: uvicorn's httptools protocol, with limits on request
headers that apply before any route, key or body is looked at.

httptools keeps every header byte it is sent until the headers end, counts nothing and
waits for ever; so a client could send a header of any size (the gateway buffers it all),
any number of headers, or a byte every few seconds to hold a connection open. Here:

- more than `max_bytes` of request line and headers answers 431, counted as the bytes
  arrive, so at most one read (256 KiB) beyond the limit is ever buffered;
- more than `max_count` header fields answers 431;
- headers not complete `timeout_s` after the connection opens (or after a request's first
  byte, on a kept-alive connection) answer 408 and close the connection (an idle
  connection is just closed).

The refusal is a small application/problem+json response with `Connection: close`; the
connection then discards what the client is still sending for a moment, so that the
client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from services.common import metrics
from services.common.logs import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

LINGER_S = 2.0
"""How long a refused connection keeps reading (and dropping) what the client still sends."""

CONNECTION = "kiln.connection"
"""The scope key under which the request's connection (its `LimitedHttpProtocol`) is kept:
an SSE stream writes its body straight to it (`take_body`), and cuts it
(`transport.abort()` frees what it holds) when its client stops reading."""


class HeaderLimits(msgspec.Struct, frozen=True):
    """What one request's headers may be: bytes (request line included), fields, seconds."""

    max_bytes: int = 16 * 1024
    max_count: int = 100
    timeout_s: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> HeaderLimits:
        """The limits the settings ask for."""
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is refused."""


class _State:
    """What `LimitedHttpProtocol` keeps of its own: what it counts of the request whose
    headers it awaits, and the callback of a body taken over (`take_body`)."""

    __slots__ = (
        "awaiting",
        "bytes",
        "completed",
        "count",
        "on_lost",
        "refusal",
        "refused",
        "request_bytes",
        "timer",
    )

    def __init__(self) -> None:
        self.awaiting = True
        self.completed = 0
        self.bytes = 0
        self.count = 0
        self.request_bytes = 0
        self.refusal: tuple[int, str] | None = None
        self.refused = False
        self.timer: asyncio.TimerHandle | None = None
        self.on_lost: Callable[[], None] | None = None


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` on each request's headers."""

    limits: ClassVar[HeaderLimits] = HeaderLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute only: with 30 or more an instance's __dict__ stops sharing its keys
        # with the class and grows from 0.3 to 1.6 KB, for every connection (B3).
        self._h = _State()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request's headers must arrive in time."""
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: no timer outlives it, and a body taken over hears of it."""
        self._disarm_header_timer()
        super().connection_lost(exc)
        on_lost, self._h.on_lost = self._h.on_lost, None
        if on_lost is not None:
            on_lost()

    def take_body(self, send: Any, on_lost: Callable[[], None]) -> bool:
        """Let the application write the body of the response it sends with `send` (this
        connection's ASGI send of one request) itself, straight to `self.transport` as
        HTTP/1.1 chunks, instead of one ASGI message per write.

        Only once that response has started, chunked (not a HEAD); False otherwise (the
        application then goes on with `send`). The caller keeps uvicorn's flow control: it
        waits on `self.flow.drain()` while `self.flow.write_paused`, writes nothing once
        `self.transport.is_closing()`, and ends the response with its last ASGI message
        (`more_body: False`) through `send`, so that uvicorn finishes the request
        (keep-alive, a request pipelined behind it). `on_lost` is called once if the
        connection closes first; `release_body()` forgets it.
        """
        cycle = getattr(send, "__self__", None)
        if (
            not isinstance(cycle, RequestResponseCycle)
            or cycle.transport is not self.transport
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
            or cycle.scope.get("method") == "HEAD"
            or self.transport.is_closing()
        ):
            return False
        self._h.on_lost = on_lost
        # Reading stays on (as an ASGI `receive` would keep it) so that a client's close is
        # heard even with a request pipelined behind the stream, which paused it.
        self.flow.resume_reading()
        return True

    def release_body(self) -> None:
        """The body taken over with `take_body` has ended."""
        self._h.on_lost = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes that arrive while headers are awaited."""
        if self._h.refused:
            return  # lingering: what a refused client still sends is dropped
        self._unset_keepalive_if_required()
        # Only a read that neither began nor ended a request's headers counts whole: one
        # that holds a whole request and the start of the next is checked field by field.
        counted = self._h.awaiting
        completed = self._h.completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._h.refusal is None:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
                return
        if (
            self._h.refusal is None
            and counted
            and self._h.awaiting
            and self._h.completed == completed
        ):
            self._h.bytes += len(data)
            if self._h.bytes > self.limits.max_bytes:
                self._h.refusal = (431, self._too_large())
        if self._h.refusal is not None:
            self._refuse(*self._h.refusal)

    def on_message_begin(self) -> None:
        """A request starts: count its headers afresh and time them."""
        super().on_message_begin()
        self._h.awaiting = True
        self._h.count = 0
        self._h.request_bytes = 0
        if self._h.timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._h.request_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field: refused past the count or the size."""
        self._h.count += 1
        self._h.request_bytes += len(name) + len(value) + 4
        if self._h.count > self.limits.max_count:
            self._h.refusal = (
                431,
                f"A request may have at most {self.limits.max_count} header fields.",
            )
            raise _Refused
        if self._h.request_bytes > self.limits.max_bytes:
            self._h.refusal = (431, self._too_large())
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The headers are in, within the limits: the request goes to the application."""
        self._h.awaiting = False
        self._h.completed += 1
        self._h.bytes = 0
        self._disarm_header_timer()
        self.scope[CONNECTION] = self  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """A request's body is in; the next request's bytes count towards its headers."""
        super().on_message_complete()
        self._h.awaiting = True
        self._h.bytes = 0

    def _too_large(self) -> str:
        return f"The request line and headers may be at most {self.limits.max_bytes} bytes."

    def _arm_header_timer(self) -> None:
        self._h.timer = self.loop.call_later(self.limits.timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._h.timer is not None:
            self._h.timer.cancel()
            self._h.timer = None

    def _headers_timed_out(self) -> None:
        self._h.timer = None
        if self._h.refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (a pipelined request waits behind it):
            # the slow request is timed again once that one is done.
            self._arm_header_timer()
            return
        if self.headers is None and self._h.bytes == 0:
            # Nothing of a request arrived: an idle connection is just closed.
            metrics.http_refused.labels(reason="header_timeout").inc()
            self.transport.close()
            return
        self._refuse(
            408,
            f"The request headers did not arrive within {self.limits.timeout_s:g} seconds.",
        )

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a problem+json body, then close after a short linger."""
        self._h.refused = True
        self._disarm_header_timer()
        reason = "header_timeout" if status == 408 else "headers_too_large"
        metrics.http_refused.labels(reason=reason).inc()
        log.info(
            "Refused a request from {client} with {status}: {detail}",
            client=f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            status=status,
            detail=detail,
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written: no room for another
            return
        phrase = http.HTTPStatus(status).phrase
        body = msgspec.json.encode(
            {"type": "about:blank", "title": phrase, "status": status, "detail": detail}
        )
        head = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def protocol_class(settings: Settings) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`) for these settings."""
    limits = HeaderLimits.of(settings)
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
