"""Following a generation's SSE stream until its end, whatever happens to the connection.

A dropped connection is resumed with `Last-Event-ID`; an expired stream token is renewed
through `POST /generations/{id}/stream-token`; an event already seen is never handed on
twice; a 204 (the client already has everything) or the terminal event ends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
from httpx_sse import connect_sse

from contracts.events import TERMINAL_TAGS
from services.cli.client.connection import ClientError, Gateway, problem_text


class StreamEvent(msgspec.Struct, frozen=True):
    """One SSE event: its stream sequence, type and the event as JSON."""

    id: int
    type: str
    data: dict[str, Any]


class Reconnecting(msgspec.Struct, frozen=True):
    """The connection dropped; the follower will resume after `delay_s`."""

    after_id: int
    reason: str
    delay_s: float


def follow(
    gateway: Gateway,
    generation_id: str,
    *,
    stream_url: str | None = None,
    give_up_after_s: float = 120.0,
) -> Iterator[StreamEvent | Reconnecting]:
    """Every event of the generation from the start, then live, until its terminal event."""
    url = stream_url or _fresh_url(gateway, generation_id)
    last_id = 0
    delay = 0.25
    quiet_since = time.monotonic()
    while True:
        headers = {"Last-Event-ID": str(last_id)} if last_id else {}
        try:
            with connect_sse(
                gateway.http, "GET", url, headers=headers, timeout=httpx.Timeout(30, read=60)
            ) as source:
                response = source.response
                if response.status_code == 204:
                    return
                if response.status_code == 401:
                    url = _fresh_url(gateway, generation_id)
                    continue
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(problem_text(response))
                for message in source.iter_sse():
                    if not message.id or int(message.id) <= last_id:
                        continue
                    event = StreamEvent(int(message.id), message.event, json.loads(message.data))
                    last_id = event.id
                    delay = 0.25
                    quiet_since = time.monotonic()
                    yield event
                    if event.type in TERMINAL_TAGS:
                        return
                reason = "the stream ended before the generation did"
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        if time.monotonic() - quiet_since > give_up_after_s:
            raise ClientError(
                f"no event for {give_up_after_s:.0f} s; the gateway at {gateway.url} is gone"
            )
        yield Reconnecting(last_id, reason, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _fresh_url(gateway: Gateway, generation_id: str) -> str:
    token = gateway.json("POST", f"/generations/{generation_id}/stream-token")
    return str(token["stream_url"])
