"""Following a stream: resume with Last-Event-ID, never hand on an event twice, renew an
expired token, stop at the terminal event or a 204. Scripted streams (httpx's mock
transport) for the connection's misfortunes, and a real stack for the token's expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.codec import encode
from contracts.events import Event, FileWritten, GenerationCompleted, PhaseStarted, event_tag
from services.cli.client.connection import ClientError, Gateway
from services.cli.client.follow import Reconnecting, StreamEvent, follow
from services.common.embedded_nats import EmbeddedNats
from tests.conftest import ALICE_KEY, make_settings
from tests.support.stack import running_stack, schema_with

GID = "g-1"
STREAM = f"/generations/{GID}/stream"


def _event(seq: int) -> Event:
    common: dict[str, Any] = {
        "event_id": f"e-{seq}",
        "generation_id": GID,
        "project_id": "p-1",
        "seq": seq,
        "at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    if seq == 1:
        return PhaseStarted(**common, phase="plan")
    if seq == 5:
        return GenerationCompleted(**common, file_count=3, total_bytes=30, duration_ms=9)
    return FileWritten(
        **common, path=f"f{seq}.py", content="", sha256="0" * 64, size=10, phase="plan"
    )


def _sse(*seqs: int) -> bytes:
    blocks = [b"retry: 2000\n\n"]
    for seq in seqs:
        event = _event(seq)
        blocks.append(
            b"id: %d\nevent: %s\ndata: %s\n\n"
            % (seq, event_tag(type(event)).encode(), encode(event))
        )
    return b"".join(blocks)


def _stream(content: bytes) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"Content-Type": "text/event-stream"})


Script = Callable[[httpx.Request], httpx.Response]


def _gateway(script: Script) -> Gateway:
    return Gateway("http://kiln.test", ALICE_KEY, transport=httpx.MockTransport(script))


def _follow(gateway: Gateway, **kwargs: object) -> Iterator[StreamEvent | Reconnecting]:
    return follow(gateway, GID, stream_url=f"{STREAM}?token=t0", sleep=lambda _: None, **kwargs)  # type: ignore[arg-type]


def test_a_dropped_stream_is_resumed_after_the_last_event_and_nothing_repeats() -> None:
    seen_last_ids: list[str | None] = []

    def script(request: httpx.Request) -> httpx.Response:
        seen_last_ids.append(request.headers.get("last-event-id"))
        if len(seen_last_ids) == 1:
            return _stream(content=_sse(1, 2))  # ends before the terminal event
        if len(seen_last_ids) == 2:
            raise httpx.ReadError("connection reset")
        return _stream(content=_sse(2, 3, 4, 5))  # the gateway repeats event 2

    items = list(_follow(_gateway(script)))

    assert seen_last_ids == [None, "2", "2"]
    assert [item.id for item in items if isinstance(item, StreamEvent)] == [1, 2, 3, 4, 5]
    notes = [item for item in items if isinstance(item, Reconnecting)]
    assert [n.after_id for n in notes] == [2, 2]
    assert notes[0].delay_s < notes[1].delay_s, "the pause grows while nothing arrives"
    assert isinstance(items[-1], StreamEvent) and items[-1].is_terminal
    assert isinstance(items[0], StreamEvent) and isinstance(items[0].event, PhaseStarted)


def test_a_204_ends_the_follow() -> None:
    calls = 0

    def script(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return _stream(content=_sse(1, 2)) if calls == 1 else httpx.Response(204)

    items = list(_follow(_gateway(script)))
    assert [i.id for i in items if isinstance(i, StreamEvent)] == [1, 2]
    assert calls == 2


def test_an_expired_token_is_renewed_once_and_a_second_401_is_an_error() -> None:
    tokens: list[str | None] = []

    def script(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream-token"):
            fresh = f"t{len(tokens)}"
            return httpx.Response(
                200, json={"generation_id": GID, "stream_url": f"{STREAM}?token={fresh}"}
            )
        tokens.append(request.url.params.get("token"))
        if request.url.params.get("token") == "t0":
            return httpx.Response(
                401, json={"title": "Unauthorized", "detail": "the token has expired"}
            )
        return _stream(content=_sse(1, 2, 3, 4, 5))

    assert [i.id for i in _follow(_gateway(script)) if isinstance(i, StreamEvent)] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert tokens == ["t0", "t1"]

    def always_401(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream-token"):
            return httpx.Response(200, json={"generation_id": GID, "stream_url": STREAM})
        return httpx.Response(401, json={"title": "Unauthorized", "detail": "no, never"})

    with pytest.raises(ClientError, match="401 Unauthorized: no, never"):
        list(_follow(_gateway(always_401)))


def test_an_unknown_event_type_is_handed_on_untyped() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        novel = b'id: 1\nevent: phase.pondered\ndata: {"type": "phase.pondered"}\n\n'
        return _stream(content=novel + _sse(5).removeprefix(b"retry: 2000\n\n"))

    items = list(_follow(_gateway(script)))
    assert [(i.type, i.event is None) for i in items if isinstance(i, StreamEvent)] == [
        ("phase.pondered", True),
        ("generation.completed", False),
    ]


def test_a_gateway_gone_for_good_is_given_up_on() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ClientError, match="giving up"):
        list(_follow(_gateway(script), give_up_after_s=0.0))


async def test_following_with_an_expired_token_renews_it_against_a_real_gateway(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_SSE_TOKEN_TTL="2")
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed(schema_with(1))
        await asyncio.sleep(3.1)  # the token in accepted["stream_url"] has expired
        expired = await stack.anonymous.get(accepted["stream_url"])
        assert expired.status_code == 401

        def run() -> list[StreamEvent]:
            gateway = Gateway(stack.url, ALICE_KEY)
            try:
                items = follow(
                    gateway, accepted["generation_id"], stream_url=accepted["stream_url"]
                )
                return [item for item in items if isinstance(item, StreamEvent)]
            finally:
                gateway.close()

        events = await asyncio.to_thread(run)
    assert events[0].type == "generation.requested" and events[-1].type == "generation.completed"
    assert [e.id for e in events] == sorted({e.id for e in events})
