"""/asyncapi: the AsyncAPI 3.0 document of Kiln's subjects, for clients of the broker."""

from __future__ import annotations

from typing import Any

from litestar import get

from contracts.asyncapi import document
from services.gateway.routes.dependencies import NoKeyOperation

_DOCUMENT = document()


@get(
    "/asyncapi",
    summary="The AsyncAPI 3.0 document of Kiln's NATS subjects and payloads",
    tags=["operations"],
    operation_class=NoKeyOperation,
)
async def asyncapi() -> dict[str, Any]:
    """Generated from the event contracts (as `kiln asyncapi` prints it); no API key needed."""
    return _DOCUMENT
