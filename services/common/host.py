"""What every back-end service (orchestrator, storage, verifier) does around its own work:
connect to NATS with the streams in place, serve health and metrics, and close cleanly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from services.common.broker import connect, ensure_streams
from services.common.health import HealthServer
from services.common.logs import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

Readiness = Callable[[], Awaitable[dict[str, str]]]


@contextlib.asynccontextmanager
async def broker_session(
    settings: Settings, client_name: str
) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A NATS connection with Kiln's streams ensured, closed without losing a settle."""
    nc = await connect(settings, client_name)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_replicas)
        yield nc, js
    finally:
        # Not `nc.drain()`: nats-py never marks what a pull subscription fetched as done, so
        # a drain sits out its whole timeout. Every settle has been sent by now; a flush
        # makes sure the server has them all before the connection ends.
        try:
            await nc.flush(timeout=5)
        except Exception as exc:
            log.warning("Could not flush the NATS connection before closing", error=repr(exc))
        await nc.close()


def nats_readiness(nc: Client) -> Readiness:
    """A readiness check that only asks whether NATS is connected."""

    async def readiness() -> dict[str, str]:
        return {"nats": "ok" if nc.is_connected else "disconnected"}

    return readiness


@contextlib.asynccontextmanager
async def health_endpoint(settings: Settings, readiness: Readiness) -> AsyncIterator[None]:
    """`/healthz`, `/readyz` and `/metrics` on the service's health port, if it has one."""
    if not settings.health_port:
        yield
        return
    server = HealthServer(settings.health_host, settings.health_port, readiness)
    await server.start()
    try:
        yield
    finally:
        await server.stop()
