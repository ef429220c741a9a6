"""The gateway's HTTP/1.1 connection: uvicorn's httptools protocol, with limits on request
headers and bodies that apply before any route, key or body is looked at.

httptools keeps every header byte it is sent until the headers end, counts nothing and
waits for ever; so a client could send a header of any size (the gateway buffers it all),
any number of headers, or a byte every few seconds to hold a connection open; and the
application's own body limit applies only to a route that reads the body, with no
deadline. Here:

- more than `max_header_bytes` of request line and headers answers 431, counted as the
  bytes arrive, so at most one read (256 KiB) beyond the limit is ever buffered;
- more than `max_headers` header fields answers 431;
- headers not complete `header_timeout_s` after the connection opens (or after a request's
  first byte, on a kept-alive connection) answer 408 and close the connection (an idle
  connection is just closed);
- a `Content-Length` over `max_body_bytes` answers 413 as soon as the headers are in, and
  the application never sees the request; a chunked body answers 413 once more than
  `max_body_bytes` of it has arrived;
- a body not complete `body_timeout_s` after its headers answers 408 and closes the
  connection (a request without a body, an SSE stream's GET, has no such deadline).

The refusal is a small application/problem+json response with `Connection: close` (if the
application has already begun its answer to that request, the connection is just closed);
the connection then drops what the client is still sending, for a moment and at most
`LINGER_MAX_BYTES`, so that the client reads the answer rather than a reset, and then
resets it.
"""

from __future__ import annotations

import asyncio
import http
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from services.common import metrics
from services.common.logs import get_logger
from services.common.settings import Settings
from services.gateway.errors import BODY_TOO_LARGE, PayloadTooLarge

log = get_logger(__name__)

LINGER_S = 2.0
"""How long a refused connection keeps reading (and dropping) what the client still sends."""

LINGER_MAX_BYTES = 1024 * 1024
"""How much of what a refused client still sends is read (and dropped) before the
connection is reset: a client that goes on sending costs no more than this."""

CONNECTION = "kiln.connection"
"""The scope key under which the request's connection (its `LimitedHttpProtocol`) is kept:
an SSE stream writes its body straight to it (`take_body`), and cuts it
(`transport.abort()` frees what it holds) when its client stops reading."""

REFUSED = "kiln.refused"
"""The scope key under which the protocol leaves the status it answered a request with
itself, having cut its body (408, 413) while the application held it: the application's
own answer is then never sent, and the request is counted with this status
(services/gateway/middleware.py)."""


class RequestLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one request may be: its headers' bytes (request line included), fields and
    seconds; its body's bytes and seconds."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_body_bytes: int = 1024 * 1024
    body_timeout_s: float = 30.0

    @classmethod
    def of(cls, settings: Settings) -> RequestLimits:
        """The limits the settings ask for: the settings of the same names."""
        return msgspec.convert(settings, cls, from_attributes=True)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is refused."""


class _Refusal(msgspec.Struct, frozen=True):
    """A request refused: its status, the `reason` label it is counted under, the detail."""

    status: int
    reason: str
    detail: str


@dataclass(slots=True, eq=False)
class _State:
    """What `LimitedHttpProtocol` keeps of its own: what it counts of the request whose
    headers (or body) it awaits, what it dropped after a refusal, and the callback of a
    body taken over (`take_body`)."""

    awaiting: bool = True
    completed: int = 0
    bytes: int = 0
    count: int = 0
    request_bytes: int = 0
    body_bytes: int = 0
    dropped: int = 0
    refusal: _Refusal | None = None
    refused: bool = False
    timer: asyncio.TimerHandle | None = None
    """The header deadline (while `awaiting`) or the body deadline (after the headers, until
    the request's last byte): never both at once."""
    on_lost: Callable[[], None] | None = None


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` on each request's headers and body."""

    limits: ClassVar[RequestLimits] = RequestLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute only: with 30 or more an instance's __dict__ stops sharing its keys
        # with the class and grows from 0.3 to 1.6 KB, for every connection (B3).
        self._h = _State()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request's headers must arrive in time."""
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: no timer outlives it, and a body taken over hears of it."""
        self._disarm()
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
            # Lingering: what a refused client still sends is dropped, up to a point.
            self._h.dropped += len(data)
            if self._h.dropped > LINGER_MAX_BYTES:
                self._end_linger()
            return
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
            if self._h.bytes > self.limits.max_header_bytes:
                self._h.refusal = self._too_large()
        if self._h.refusal is not None:
            self._refuse(self._h.refusal)

    def on_message_begin(self) -> None:
        """A request starts: count its headers afresh and time them."""
        super().on_message_begin()
        self._h.awaiting = True
        self._h.count = 0
        self._h.request_bytes = 0
        if self._h.timer is None:
            self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._h.request_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field: refused past the count or the size."""
        self._h.count += 1
        self._h.request_bytes += len(name) + len(value) + 4
        if self._h.count > self.limits.max_headers:
            self._h.refusal = _Refusal(
                431,
                "headers_too_large",
                f"A request may have at most {self.limits.max_headers} header fields.",
            )
            raise _Refused
        if self._h.request_bytes > self.limits.max_header_bytes:
            self._h.refusal = self._too_large()
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The headers are in, within the limits: the request goes to the application,
        unless it declares a body over the limit; a body must then arrive in time."""
        self._disarm()
        declared, chunked = _body_of(self.headers)
        if declared > self.limits.max_body_bytes:
            # Refused as the headers' last field would be: the application never sees it.
            self._h.refusal = _Refusal(413, "body_too_large", BODY_TOO_LARGE)
            raise _Refused
        self._h.awaiting = False
        self._h.completed += 1
        self._h.bytes = 0
        self._h.body_bytes = 0
        self.scope[CONNECTION] = self  # type: ignore[literal-required]
        super().on_headers_complete()
        if declared or chunked:
            self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        """Part of a request's body: refused once more than the limit has arrived (only a
        chunked body can, a declared length was checked with the headers)."""
        self._h.body_bytes += len(body)
        if self._h.body_bytes > self.limits.max_body_bytes:
            self._h.refusal = _Refusal(413, "body_too_large", BODY_TOO_LARGE)
            raise _Refused
        super().on_body(body)

    def on_message_complete(self) -> None:
        """A request's body is in; the next request's bytes count towards its headers."""
        self._disarm()
        super().on_message_complete()
        self._h.awaiting = True
        self._h.bytes = 0

    def _too_large(self) -> _Refusal:
        return _Refusal(
            431,
            "headers_too_large",
            f"The request line and headers may be at most {self.limits.max_header_bytes} bytes.",
        )

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._h.timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
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
            self._arm(self.limits.header_timeout_s, self._headers_timed_out)
            return
        if self.headers is None and self._h.bytes == 0:
            # Nothing of a request arrived: an idle connection is just closed.
            metrics.http_refused.labels(reason="header_timeout").inc()
            self.transport.close()
            return
        self._refuse(
            _Refusal(
                408,
                "header_timeout",
                f"The request headers did not arrive within {self.limits.header_timeout_s:g} "
                "seconds.",
            )
        )

    def _body_timed_out(self) -> None:
        self._h.timer = None
        if self._h.refused or self.transport.is_closing():
            return
        if self.pipeline or self.flow.read_paused:
            # The gateway is not reading (a response ahead of this request is being
            # written, or the application has yet to take what arrived): not the
            # client's delay, so the body is timed again.
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        self._refuse(
            _Refusal(
                408,
                "body_timeout",
                f"The request body did not arrive within {self.limits.body_timeout_s:g} "
                "seconds of its headers.",
            )
        )

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer with `refusal` as problem+json, then drop what the client still sends for
        a short linger; or just close, if a response is already under way."""
        self._h.refused = True
        self._disarm()
        metrics.http_refused.labels(reason=refusal.reason).inc()
        log.info(
            "Refused a request from {client} with {status}: {detail}",
            client=f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            status=refusal.status,
            detail=refusal.detail,
        )
        cycle = self.cycle
        if self._h.awaiting:
            # The refused request has no cycle yet: the one before it must be answered.
            busy = cycle is not None and not cycle.response_complete
        else:
            # Its body is refused: the application has it, and may have begun its answer
            # (or still be writing one to a request before it).
            busy = cycle.response_started or bool(self.pipeline)
        if busy:
            self.transport.close()  # a response is being written: no room for another
            return
        if not self._h.awaiting:
            # The application hears that the client is gone, and what it sends is dropped;
            # the request is counted with the status the client was answered.
            cycle.scope[REFUSED] = refusal.status  # type: ignore[literal-required]
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(self._problem(refusal))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # what the client still sends is read and dropped
        self.loop.call_later(LINGER_S, self._end_linger)

    def _problem(self, refusal: _Refusal) -> bytes:
        """The whole response of a refusal; its `instance` is the request's path, once the
        request line is in (a request refused for its body)."""
        status = refusal.status
        phrase = http.HTTPStatus(status).phrase
        problem: dict[str, object] = {
            "type": "about:blank",
            # A 413 reads as the application's own, whichever of the two refused the body.
            "title": PayloadTooLarge.title if status == 413 else phrase,
            "status": status,
            "detail": refusal.detail,
        }
        if refusal.reason.startswith("body_") and (path := _path_of(self.url)) is not None:
            problem["instance"] = path
        body = msgspec.json.encode(problem)
        head = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        return head + body

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def _body_of(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """A request's declared body length (0 if none) and whether its body is chunked, from
    its (lower-cased) header fields; the parser has already refused a malformed length."""
    declared, chunked = 0, False
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


def _path_of(url: bytes) -> str | None:
    """The path of a request target, decoded as the application sees it; None if it is not
    a URL."""
    try:
        path = httptools.parse_url(url).path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return None
    return urllib.parse.unquote(path)


def protocol_class(settings: Settings) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`) for these settings."""
    limits = RequestLimits.of(settings)
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
