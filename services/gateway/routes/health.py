"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Operation

from services.common.metrics import MEDIA_TYPE, exposition
from services.common.settings import Settings
from services.gateway.errors import NotFound, error_responses
from services.gateway.routes.dependencies import GatewayDep, NoKeyOperation, gateway
from services.gateway.schemas import Health
from services.gateway.state import Gateway


@get(
    "/healthz",
    summary="Liveness",
    tags=["operations"],
    operation_class=NoKeyOperation,
    dependencies={"gw": Provide(gateway, sync_to_thread=False)},
)
async def healthz(gw: GatewayDep) -> Health:
    """The process is up."""
    return Health(status="ok")


@get(
    "/readyz",
    summary="Readiness: NATS and the database reachable",
    tags=["operations"],
    operation_class=NoKeyOperation,
    responses={503: ResponseSpec(Health, description="Not ready; `checks` says what fails.")},
    dependencies={"gw": Provide(gateway, sync_to_thread=False)},
)
async def readyz(gw: GatewayDep) -> Response[Health]:
    """200 when NATS is connected and the database answers, else 503."""
    checks = await readiness_checks(gw)
    ready = all(v == "ok" for v in checks.values())
    return Response(
        Health(status="ok" if ready else "unavailable", checks=checks),
        status_code=200 if ready else 503,
    )


async def readiness_checks(gw: Gateway) -> dict[str, str]:
    """What the gateway needs, each "ok" or why not: NATS connected, the database answering."""
    checks: dict[str, str] = {}
    checks["nats"] = "ok" if gw.nc.is_connected else "disconnected"
    try:
        await asyncio.wait_for(gw.read_model.ping(), 2.0)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    return checks


def metrics_route(settings: Settings) -> HTTPRouteHandler:
    """`GET /metrics` as KILN_METRICS_ACCESS says: open to all, behind an API key, or not
    on the API port at all (then the health port serves it)."""
    access = settings.metrics_access
    description = {
        "public": "No API key needed (KILN_METRICS_ACCESS=public).",
        "key": "Needs `Authorization: Bearer <an API key>` (KILN_METRICS_ACCESS=key).",
        "health-port": "Served on the health port only (KILN_METRICS_ACCESS=health-port).",
    }[access]

    @get(
        "/metrics",
        summary="Prometheus metrics",
        description="Requests, open SSE connections, events delivered, replay durations. "
        + description,
        tags=["operations"],
        media_type=MEDIA_TYPE,
        operation_class=NoKeyOperation if access == "public" else Operation,
        include_in_schema=access != "health-port",
        responses=error_responses(401) if access == "key" else None,
        dependencies={"gw": Provide(gateway, sync_to_thread=False)},
    )
    async def prometheus_metrics(
        request: Request[Any, Any, Any], gw: GatewayDep
    ) -> Response[bytes]:
        if access == "health-port":
            raise NotFound(f"No route or resource at {request.url.path}.")
        if access == "key":
            gw.keys.user_for(request.headers.get("authorization"))
        data, _ = exposition()
        return Response(data, media_type=MEDIA_TYPE)

    return prometheus_metrics
