"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.di import Provide

from services.common.metrics import MEDIA_TYPE, exposition
from services.gateway.routes.dependencies import GatewayDep, gateway
from services.gateway.schemas import Health


@get(
    "/healthz",
    summary="Liveness",
    tags=["operations"],
    dependencies={"gw": Provide(gateway, sync_to_thread=False)},
)
async def healthz(gw: GatewayDep) -> Health:
    """The process is up."""
    return Health(status="ok")


@get(
    "/readyz",
    summary="Readiness: NATS and the database reachable",
    tags=["operations"],
    dependencies={"gw": Provide(gateway, sync_to_thread=False)},
)
async def readyz(gw: GatewayDep) -> Response[Health]:
    """200 when NATS is connected and the database answers, else 503."""
    checks: dict[str, str] = {}
    checks["nats"] = "ok" if gw.nc.is_connected else "disconnected"
    try:
        await asyncio.wait_for(gw.read_model.ping(), 2.0)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return Response(
        Health(status="ok" if ready else "unavailable", checks=checks),
        status_code=200 if ready else 503,
    )


@get("/metrics", summary="Prometheus metrics", tags=["operations"], media_type="text/plain")
async def prometheus_metrics() -> Response[bytes]:
    """Requests, open SSE connections, events delivered, replay durations."""
    data, _ = exposition()
    return Response(data, media_type=MEDIA_TYPE)
