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
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common import metrics
from services.common.logs import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

LINGER_S = 2.0
"""How long a refused connection keeps reading (and dropping) what the client still sends."""

TRANSPORT = "kiln.transport"
"""The scope key under which the connection's transport is kept, so that an SSE stream
whose client stops reading can be cut (`transport.abort()` frees what it holds)."""


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


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` on each request's headers."""

    limits: ClassVar[HeaderLimits] = HeaderLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._headers_completed = 0
        self._header_bytes = 0
        self._header_count = 0
        self._request_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request's headers must arrive in time."""
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: no timer outlives it."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes that arrive while headers are awaited."""
        if self._refused:
            return  # lingering: what a refused client still sends is dropped
        self._unset_keepalive_if_required()
        # Only a read that neither began nor ended a request's headers counts whole: one
        # that holds a whole request and the start of the next is checked field by field.
        counted = self._awaiting_headers
        completed = self._headers_completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is None:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
                return
        if (
            self._refusal is None
            and counted
            and self._awaiting_headers
            and self._headers_completed == completed
        ):
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_bytes:
                self._refusal = (431, self._too_large())
        if self._refusal is not None:
            self._refuse(*self._refusal)

    def on_message_begin(self) -> None:
        """A request starts: count its headers afresh and time them."""
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_count = 0
        self._request_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._request_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field: refused past the count or the size."""
        self._header_count += 1
        self._request_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_count:
            self._refusal = (
                431,
                f"A request may have at most {self.limits.max_count} header fields.",
            )
            raise _Refused
        if self._request_bytes > self.limits.max_bytes:
            self._refusal = (431, self._too_large())
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The headers are in, within the limits: the request goes to the application."""
        self._awaiting_headers = False
        self._headers_completed += 1
        self._header_bytes = 0
        self._disarm_header_timer()
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """A request's body is in; the next request's bytes count towards its headers."""
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = 0

    def _too_large(self) -> str:
        return f"The request line and headers may be at most {self.limits.max_bytes} bytes."

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (a pipelined request waits behind it):
            # the slow request is timed again once that one is done.
            self._arm_header_timer()
            return
        if self.headers is None and self._header_bytes == 0:
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
        self._refused = True
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
