"""Abuse limits: request size, new generations per key, open streams per key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from services.common.embedded_nats import EmbeddedNats
from tests.conftest import make_settings
from tests.support.stack import SCHEMA_ONE, running_stack
from tests.support.waiting import eventually


async def test_a_body_over_the_limit_gets_413_and_nothing_is_published(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_MAX_BODY_BYTES="2048")
    async with running_stack(settings, orchestrator=False) as stack:
        response = await stack.alice.post(
            "/generations",
            json={"project_name": "big", "schema": SCHEMA_ONE, "prompt": "x" * 4000},
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (await stack.alice.get("/projects")).json() == {"projects": []}


async def test_new_generations_are_rate_limited_per_key_with_retry_after(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    settings = make_settings(
        tmp_path, nats_server.url, KILN_GENERATION_BURST="3", KILN_GENERATIONS_PER_MINUTE="6"
    )
    async with running_stack(settings, orchestrator=False) as stack:
        for _ in range(3):
            assert (await stack.alice.post("/generations", json=_body())).status_code == 201
        refused = await stack.alice.post("/generations", json=_body())
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        assert "Try again in" in refused.json()["detail"]
        # Another key has its own allowance, and the refused request published nothing.
        assert (await stack.bob.post("/generations", json=_body())).status_code == 201

        async def three_projects() -> bool:  # the project list is the read model's
            return len((await stack.alice.get("/projects")).json()["projects"]) >= 3

        await eventually(three_projects, 10, what="storage to list three projects")
        await asyncio.sleep(0.2)
        assert len((await stack.alice.get("/projects")).json()["projects"]) == 3


async def test_open_streams_are_capped_per_key(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_MAX_STREAMS_PER_KEY="2")
    async with running_stack(settings, orchestrator=False) as stack:
        accepted = (await stack.alice.post("/generations", json=_body())).json()
        url = f"{stack.url}{accepted['stream_url']}"
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.send(client.build_request("GET", url), stream=True)
            second = await client.send(client.build_request("GET", url), stream=True)
            assert first.status_code == second.status_code == 200
            third = await client.get(url)
            assert third.status_code == 429, third.text
            assert "open event streams" in third.json()["detail"]
            await first.aclose()
            # The slot comes back once the server has seen the disconnect.

            async def slot_released() -> bool:
                again = await client.send(client.build_request("GET", url), stream=True)
                await again.aclose()
                return again.status_code == 200

            await eventually(slot_released, 10, what="the closed stream's slot to be released")
            await second.aclose()


def _body() -> dict[str, object]:
    return {"project_name": "p", "schema": SCHEMA_ONE}
