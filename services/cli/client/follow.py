"""Following a generation's SSE stream until its end, whatever happens to the connection.

A dropped connection is resumed with `Last-Event-ID` after a growing pause; an expired
stream token is renewed through `POST /generations/{id}/stream-token`; an event already
seen is never handed on twice; the terminal event, or a 204 (the client already has
everything), ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import msgspec
from httpx_sse import connect_sse

from contracts.codec import DecodeError, decode_event
from contracts.events import TERMINAL_TAGS, AnyEvent
from services.cli.client.connection import ClientError, Gateway, problem_text
from services.cli.client.responses import StreamToken

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0


class StreamEvent(msgspec.Struct, frozen=True):
    """One SSE event: its stream sequence (`id:`), its type (`event:`) and the event.

    `event` is None for a type this `kiln` does not know (a newer gateway's)."""

    id: int
    type: str
    event: AnyEvent | None

    @property
    def is_terminal(self) -> bool:
        """The generation's last event: completed, failed or cancelled."""
        return self.type in TERMINAL_TAGS


class Reconnecting(msgspec.Struct, frozen=True):
    """The connection dropped after event `after_id`; it is resumed in `delay_s`."""

    after_id: int
    reason: str
    delay_s: float


def follow(
    gateway: Gateway,
    generation_id: str,
    *,
    stream_url: str | None = None,
    give_up_after_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[StreamEvent | Reconnecting]:
    """Every event of the generation from the start, then live, up to its terminal event.

    Ends without a terminal event only on a 204 (a resume after the end). ClientError when
    the gateway refuses the stream, or no event could be had for `give_up_after_s`.
    """
    url = stream_url or _fresh_url(gateway, generation_id)
    last_id = 0
    delay = FIRST_DELAY_S
    renewed = False
    quiet_since = time.monotonic()
    while True:
        headers = {"Last-Event-ID": str(last_id)} if last_id else {}
        try:
            with connect_sse(
                gateway.http, "GET", url, headers=headers, timeout=httpx.Timeout(30, read=90)
            ) as source:
                response = source.response
                if response.status_code == 204:
                    return
                if response.status_code == 401 and not renewed:
                    url, renewed = _fresh_url(gateway, generation_id), True
                    continue
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(problem_text(response))
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    raise ClientError(f"{gateway.url} answered the stream with no event stream")
                renewed = False
                for message in source.iter_sse():
                    if not message.id.isdigit() or int(message.id) <= last_id:
                        continue  # the opening `retry:` block, or an event already handed on
                    event = StreamEvent(int(message.id), message.event, _decoded(message.data))
                    last_id, delay, quiet_since = event.id, FIRST_DELAY_S, time.monotonic()
                    yield event
                    if event.is_terminal:
                        return
                reason = "the stream ended before the generation did"
        except httpx.TransportError as exc:
            reason = f"connection lost ({type(exc).__name__})"
        if time.monotonic() - quiet_since > give_up_after_s:
            raise ClientError(
                f"no event of generation {generation_id} for {give_up_after_s:.0f} s; "
                f"giving up on the gateway at {gateway.url}"
            )
        yield Reconnecting(last_id, reason, delay)
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


def _decoded(data: str) -> AnyEvent | None:
    try:
        return decode_event(data.encode())
    except DecodeError:
        return None


def _fresh_url(gateway: Gateway, generation_id: str) -> str:
    return gateway.decoded(
        "POST", f"/generations/{generation_id}/stream-token", StreamToken
    ).stream_url
