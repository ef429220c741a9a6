"""The gateway serves the AsyncAPI document, without an API key."""

from __future__ import annotations

from contracts.asyncapi import document
from services.common.settings import Settings
from tests.support.stack import running_stack


async def test_the_gateway_serves_the_asyncapi_document(settings: Settings) -> None:
    async with running_stack(settings, orchestrator=False, storage=False) as stack:
        response = await stack.anonymous.get("/asyncapi")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document()
