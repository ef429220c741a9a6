"""Orchestrators advertise the providers they have the configuration for, and the
gateway's provider check reads those adverts, on a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from contracts import streams
from services.common.settings import load_settings
from services.gateway.errors import BadRequest
from services.gateway.providers import ProviderCheck
from services.orchestrator.adverts import ProviderAdverts
from services.orchestrator.providers.registry import Providers
from tests.support.waiting import eventually


def test_an_orchestrator_runs_the_providers_it_has_the_configuration_for() -> None:
    assert Providers(load_settings({})).configured() == ["offline"]
    configured = load_settings({"GEMINI_API_KEY": "k", "KILN_OPENAI_BASE_URL": "http://x/v1"})
    assert Providers(configured).configured() == ["gemini", "offline", "openai"]


async def test_the_gateway_refuses_what_no_orchestrator_advertises(js: JetStreamContext) -> None:
    check = ProviderCheck(js)
    assert await check.checked("gemini") == "gemini"  # nobody has advertised yet
    kv = await js.key_value(streams.PROVIDERS_BUCKET)
    await ProviderAdverts(kv, "worker-1", ["offline"]).publish()

    with pytest.raises(BadRequest, match="GEMINI_API_KEY"):
        await check.checked("gemini")
    assert await check.checked(None) == "offline"

    await ProviderAdverts(kv, "worker-2", ["gemini", "offline"]).publish()
    assert await check.checked("gemini") == "gemini"


async def test_adverts_are_refreshed_until_stopped(js: JetStreamContext) -> None:
    kv = await js.key_value(streams.PROVIDERS_BUCKET)
    adverts = ProviderAdverts(kv, "worker-1", ["offline"], refresh_s=0.02)
    stop = asyncio.Event()
    running = asyncio.create_task(adverts.run(stop))
    await adverts.publish()
    first = (await kv.get("offline")).revision

    async def refreshed() -> bool:
        return (await kv.get("offline")).revision > first

    await eventually(refreshed, 10, 0.02)
    stop.set()
    await running
