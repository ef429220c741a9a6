"""The gateway serves the AsyncAPI document, without an API key."""

from __future__ import annotations

from contracts.asyncapi import document
from tests.support.gateway_app import gateway_app


async def test_the_gateway_serves_the_asyncapi_document() -> None:
    async with gateway_app() as gw:
        response = await gw.client.get("/asyncapi")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document()
