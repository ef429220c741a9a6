"""One client of Kiln's HTTP API for every suite: create, iterate, wait for a status, read
or follow a generation's SSE stream. Functions over an `httpx.AsyncClient`, so the same
calls serve an in-process stack, services run as processes, and several gateways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse

from contracts.events import TERMINAL_TAGS
from tests.support.waiting import eventually

SCHEMA_ONE = {
    "entities": [
        {
            "name": "Product",
            "fields": [
                {"name": "title", "type": "string", "required": True},
                {"name": "price", "type": "decimal", "required": True},
                {"name": "in_stock", "type": "boolean", "required": False},
            ],
        }
    ]
}
FINISHED = ("completed", "failed", "cancelled")
# A stream may stay quiet for a while (a phase, a restart): wait longer for its next bytes.
SSE_TIMEOUT = httpx.Timeout(60, read=90)


class SSEEvent(msgspec.Struct, frozen=True):
    """One event as an SSE client received it."""

    id: int
    type: str
    data: dict[str, Any]


def connect(
    url: str, key: str | None = None, *, timeout: float | httpx.Timeout = 30
) -> httpx.AsyncClient:
    """A client of the gateway at `url`, with `key` as its bearer token (none: anonymous)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)


async def create(
    http: httpx.AsyncClient, schema: dict[str, Any] | None = None, **body: Any
) -> dict[str, Any]:
    """POST /generations (project "shop", SCHEMA_ONE, a prompt, unless `body` says else);
    the 201 body."""
    payload = {"project_name": "shop", "schema": schema or SCHEMA_ONE, "prompt": "a small shop"}
    response = await http.post("/generations", json={**payload, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def create_completed(
    http: httpx.AsyncClient,
    schema: dict[str, Any] | None = None,
    *,
    timeout: float = 60,
    **body: Any,
) -> dict[str, Any]:
    """`create`, then wait until the generation has finished and check that it completed
    (a failure is reported at once, with its status); the 201 body."""
    accepted = await create(http, schema, **body)
    status = await wait_status(http, accepted["generation_id"], timeout=timeout)
    assert status["status"] == "completed", status
    return accepted


async def iterate(
    http: httpx.AsyncClient, parent_id: str, prompt: str, **body: Any
) -> dict[str, Any]:
    """POST /generations/iterate; the 201 body."""
    payload = {"parent_generation_id": parent_id, "modification_prompt": prompt, **body}
    response = await http.post("/generations/iterate", json=payload)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def wait_status(
    http: httpx.AsyncClient,
    generation_id: str,
    *statuses: str,
    timeout: float = 60,
    every_s: float = 0.05,
) -> dict[str, Any]:
    """Poll GET /generations/{id} until its status is one of `statuses` (default: any
    finished one); its body then."""
    wanted = statuses or FINISHED
    last: list[Any] = [None]

    async def reached() -> dict[str, Any] | None:
        response = await http.get(f"/generations/{generation_id}")
        if response.status_code != 200:
            last[0] = response.text
            return None
        last[0] = body = dict(response.json())
        return body if body["status"] in wanted else None

    body: dict[str, Any] | None = await eventually(
        reached, timeout, every_s, what=lambda: f"{generation_id} to be {wanted} (last: {last[0]})"
    )
    assert body is not None  # `eventually` returns only what is truthy
    return body


async def files_of(http: httpx.AsyncClient, generation_id: str) -> dict[str, str]:
    """path → sha256 of a version, from the read model."""
    listing = (await http.get(f"/generations/{generation_id}/files")).json()
    return {f["path"]: f["sha256"] for f in listing["files"]}


def ended(event: SSEEvent) -> bool:
    """Whether the event ends its generation."""
    return event.type in TERMINAL_TAGS


async def read_events(
    http: httpx.AsyncClient,
    stream_url: str,
    *,
    last_event_id: int | None = None,
    limit: int | None = None,
    until: Callable[[SSEEvent], bool] | None = None,
    received: list[SSEEvent] | None = None,
    cut_is_end: bool = False,
    timeout: float = 60,
) -> list[SSEEvent]:
    """Read one connection of an SSE stream until the server ends it, `limit` events came,
    or `until(event)`; the events, also appended to `received` as they arrive (a caller
    can look while it runs). `cut_is_end`: a connection the server drops mid-body (a
    gateway that stops) ends the read instead of raising."""
    events = received if received is not None else []
    start = len(events)
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    cut = (httpx.RemoteProtocolError, httpx.ReadError) if cut_is_end else ()
    async with asyncio.timeout(timeout):
        with contextlib.suppress(*cut):
            async with aconnect_sse(http, "GET", stream_url, headers=headers) as source:
                source.response.raise_for_status()
                async for message in source.aiter_sse():
                    if not _is_event(message):
                        continue
                    event = _parsed(message)
                    events.append(event)
                    if limit is not None and len(events) - start >= limit:
                        break
                    if until is not None and until(event):
                        break
    return events


async def read_stream(
    url: str, stream_url: str, *, key: str | None = None, **options: Any
) -> list[SSEEvent]:
    """`read_events` on a connection of its own to the gateway at `url` (a reader that runs
    beside the test's other calls, or outlives a gateway)."""
    async with connect(url, key, timeout=SSE_TIMEOUT) as http:
        return await read_events(http, stream_url, **options)


async def follow(
    http: httpx.AsyncClient,
    stream_url: str,
    *,
    timeout: float = 60,
    answers: list[httpx.Response] | None = None,
) -> AsyncIterator[SSEEvent]:
    """Follow a stream like EventSource does: reconnect with Last-Event-ID whenever the
    connection ends before the terminal event, stop at it (or at a 204). Each connection's
    response (its status and headers) is appended to `answers`."""
    last_id: int | None = None
    async with asyncio.timeout(timeout):
        while True:
            headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
            try:
                async with aconnect_sse(http, "GET", stream_url, headers=headers) as source:
                    if answers is not None:
                        answers.append(source.response)
                    if source.response.status_code == 204:
                        return
                    source.response.raise_for_status()
                    async for message in source.aiter_sse():
                        if not _is_event(message):
                            continue
                        event = _parsed(message)
                        last_id = event.id
                        yield event
                        if ended(event):
                            return
            except (httpx.TransportError, httpx.HTTPStatusError):
                pass
            await asyncio.sleep(0.5)


def _is_event(message: ServerSentEvent) -> bool:
    """Whether an SSE block is an event. The opening `retry:` block is not, and neither is a
    keepalive comment, although httpx-sse hands it over, with the previous event's id (the
    SSE standard dispatches nothing for a block without data)."""
    return bool(message.id and message.data)


def _parsed(message: ServerSentEvent) -> SSEEvent:
    return SSEEvent(int(message.id), message.event, message.json())
