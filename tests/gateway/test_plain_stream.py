"""A stream opened with its token and nothing else is served before Litestar, and answered
exactly as the route would; every other stream request still goes through the route and
gets the route's answer, errors included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings
from services.gateway.plain_stream import ROUTE
from tests.conftest import make_settings
from tests.support import client as kiln
from tests.support.environment import ALICE_KEY
from tests.support.metrics import sample_total
from tests.support.stack import Stack, running_stack, schema_with
from tests.support.waiting import eventually


def _gateway(stack: Stack) -> Any:
    return stack.server.config.app.state["gateway"]  # type: ignore[union-attr]


def _counted(status: str) -> float:
    """How many stream requests this process's gateways answered with `status`."""
    return sample_total(
        "kiln_gateway_requests_total",
        lambda labels: labels.get("route") == ROUTE and labels.get("status") == status,
    )


def _refused() -> float:
    return sample_total("kiln_gateway_sse_streams_refused_total")


async def _opened(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (but the date) and the first bytes of a stream, closed after them."""
    response = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    try:
        first = b""
        if response.status_code == 200:
            first = await anext(response.aiter_raw())
        else:
            first = await response.aread()
    finally:
        await response.aclose()
    return response.status_code, {k: v for k, v in response.headers.items() if k != "date"}, first


async def test_a_token_stream_skips_the_route_and_answers_as_the_route_does(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))
        gateway = _gateway(stack)
        by_token = accepted["stream_url"]
        by_key = by_token.split("?")[0]
        ok_before = _counted("200")
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            plain = await _opened(client, by_token)
            assert gateway.stats.plain == 1
            routed = await _opened(client, by_key, {"authorization": f"Bearer {ALICE_KEY}"})
            assert gateway.stats.plain == 1, "a key's stream goes through the route"

        assert plain[0] == routed[0] == 200
        assert plain[1] == routed[1], "the same headers, security headers included"
        assert plain[1]["content-type"] == "text/event-stream; charset=utf-8"
        assert plain[1]["content-security-policy"].startswith("default-src 'none'")
        assert plain[2].startswith(b"retry: ") and routed[2].startswith(b"retry: ")
        assert _counted("200") == ok_before + 2, "both counted under the route's template"
        await eventually(lambda: gateway.stats.open == 0, 10)


async def test_every_other_stream_request_gets_the_routes_answer(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))
        other = await stack.create(schema_with(1), project_name="other")
        gateway = _gateway(stack)
        url = accepted["stream_url"]
        gid = accepted["generation_id"]
        token = url.split("token=")[1]
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            status, headers, body = await _opened(client, f"{url[:-3]}xyz")
            assert status == 401 and headers["content-type"] == "application/problem+json"
            assert b"signature" in body
            status, _, body = await _opened(
                client, f"/generations/{other['generation_id']}/stream?token={token}"
            )
            assert status == 401 and b"another generation" in body
            status, _, body = await _opened(client, f"/generations/{gid}/stream?token=")
            assert status == 401 and b"no token" in body
            status, _, body = await _opened(client, f"/generations/{gid}x/stream?token={token}")
            assert status == 401, "a token names one generation"
            status, _, body = await _opened(client, f"/generations/{'g' * 65}/stream?token={token}")
            assert status == 400 and b"is not a generation id" in body
            assert gateway.stats.plain == 0, "none of those started a stream"

            status, _, body = await _opened(client, url, {"last-event-id": "x"})
            assert status == 400 and b"Last-Event-ID" in body
            status, _, body = await _opened(client, f"{url}&last_event_id=-1")
            assert status == 400
            status, _, body = await _opened(client, url, {"last-event-id": "1"})
            assert status == 200 and body.startswith(b"retry: "), "a resume, through the route"
            status, _, _ = await _opened(client, f"{url}&last_event_id=1")
            assert status == 200
            head = await client.head(url)
            assert head.status_code == 405, "Litestar's answer to a HEAD, as before"
            assert gateway.stats.plain == 0, "a resume or a HEAD goes through the route"


async def test_a_token_stream_over_the_caps_is_refused_by_the_route_and_counted_once(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(
        tmp_path, nats_server.url, KILN_MAX_STREAMS_PER_KEY="1", KILN_SSE_MAX_STREAMS="2"
    )
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = await stack.create(schema_with(1))
        bobs = await kiln.create(stack.bob, schema_with(1))
        gateway = _gateway(stack)
        url = accepted["stream_url"]
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            first = await client.send(client.build_request("GET", url), stream=True)
            assert first.status_code == 200 and gateway.stats.plain == 1
            second = await client.get(url)
            assert second.status_code == 429, second.text
            assert second.headers["content-type"] == "application/problem+json"
            assert "open event streams" in second.json()["detail"]

            bobs_first = await client.send(
                client.build_request("GET", bobs["stream_url"]), stream=True
            )
            assert bobs_first.status_code == 200 and gateway.stats.plain == 2
            refused_before = _refused()
            full = await client.get(bobs["stream_url"])  # the gateway's 2 streams are open
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"]
            assert full.headers["content-type"] == "application/problem+json"
            assert _refused() == refused_before + 1, "the refusal counted once"
            assert gateway.stats.plain == 2
            await first.aclose()
            await bobs_first.aclose()
        await eventually(lambda: gateway.stats.open == 0, 10)
