"""The gateway's composition root: `create_app(settings)` wires every part together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import __version__
from services.common import metrics
from services.common.broker import connect, ensure_streams
from services.common.heap import freeze_startup_heap
from services.common.host import health_endpoint
from services.common.logs import get_logger
from services.common.settings import Settings, SettingsError, parse_api_keys, token_secret
from services.gateway.asgi import GatewayApp
from services.gateway.auth import ApiKeys
from services.gateway.commands import Commands
from services.gateway.errors import exception_handlers
from services.gateway.hub import Hub
from services.gateway.outflow import OutflowBudget
from services.gateway.providers import ProviderCheck
from services.gateway.quotas import GenerationRateLimit, StreamSlots
from services.gateway.routes.asyncapi import asyncapi
from services.gateway.routes.generations import GenerationController
from services.gateway.routes.health import healthz, metrics_route, readiness_checks, readyz
from services.gateway.routes.page import index, static_files
from services.gateway.routes.projects import ProjectController
from services.gateway.state import Gateway
from services.gateway.tokens import TokenSigner
from services.gateway.views import Views
from services.storage.db import check_migrated, create_engine
from services.storage.queries import ReadModel

log = get_logger(__name__)


Parts = Callable[[Settings, ApiKeys, TokenSigner], AbstractAsyncContextManager[Gateway]]
"""Makes the gateway's shared parts when it starts and closes them when it stops."""


@asynccontextmanager
async def connected_parts(
    settings: Settings, keys: ApiKeys, tokens: TokenSigner
) -> AsyncIterator[Gateway]:
    """The gateway's parts over a NATS connection and the read model's database: the
    broker and the read model are the only two things a test composes differently."""
    nc = await connect(settings, "kiln-gateway")
    js = nc.jetstream()
    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_streams(js, settings.stream_replicas)
        await check_migrated(engine)
        read_model = ReadModel(engine)
        hub = Hub(nc, js, keepalive_s=settings.sse_keepalive_s)
        hub.on_replay = metrics.replay_seconds.observe
        await hub.start()
        try:
            yield compose(settings, keys, tokens, nc=nc, js=js, read_model=read_model, hub=hub)
        finally:
            await hub.stop()
    finally:
        await nc.drain()
        await engine.dispose()
        log.info("Gateway stopped")


def compose(
    settings: Settings,
    keys: ApiKeys,
    tokens: TokenSigner,
    *,
    nc: Client,
    js: JetStreamContext,
    read_model: ReadModel,
    hub: Hub,
) -> Gateway:
    """The gateway's parts around a broker connection and a read model."""
    return Gateway(
        settings=settings,
        nc=nc,
        js=js,
        read_model=read_model,
        views=Views(js, read_model),
        commands=Commands(
            js,
            GenerationRateLimit(settings.generations_per_minute, settings.generation_burst),
            ProviderCheck(js),
        ),
        hub=hub,
        keys=keys,
        tokens=tokens,
        stream_slots=StreamSlots(settings.max_streams_per_key),
        outflow=OutflowBudget(
            max_streams=settings.sse_max_streams,
            max_unsent_bytes=settings.sse_max_unsent_bytes,
            max_write_bytes=settings.sse_max_write_bytes,
            write_timeout_s=settings.sse_write_timeout_s,
        ),
    )


def create_app(settings: Settings, parts: Parts = connected_parts) -> Litestar:
    """The gateway application; `parts` makes its shared parts when it starts (by default
    connecting to NATS and the database)."""
    if not settings.api_keys:
        raise SettingsError(
            "the gateway needs KILN_API_KEYS (`user:key,user:key`); `kiln up` makes one for you"
        )
    if settings.metrics_access == "health-port" and not settings.health_port:
        raise SettingsError(
            "KILN_METRICS_ACCESS=health-port needs KILN_HEALTH_PORT: the port that serves "
            "/metrics (and /healthz, /readyz) apart from the API"
        )
    keys = ApiKeys(parse_api_keys(settings.api_keys))
    metrics.export("gateway")
    tokens = TokenSigner(token_secret(settings), settings.sse_token_ttl_s, users=keys.users)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with parts(settings, keys, tokens) as gw:
            outflow_watchdog = asyncio.create_task(gw.outflow.run())
            app.state["gateway"] = gw
            # What start-up made lives as long as the gateway: keep it out of the garbage
            # collector's full passes, which otherwise stall every open stream (60-130 ms).
            freeze_startup_heap()
            log.info("Gateway ready")
            health_port = (
                health_endpoint(settings, lambda: readiness_checks(gw))
                if settings.metrics_access == "health-port"
                else contextlib.nullcontext()
            )
            try:
                async with health_port:
                    yield
            finally:
                outflow_watchdog.cancel()
                gw.stop_streams()

    return GatewayApp(
        logging_config=None,  # Kiln's own redacting formatter handles every line
        route_handlers=[
            GenerationController,
            ProjectController,
            healthz,
            readyz,
            metrics_route(settings),
            index,
            static_files,
            asyncapi,
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Kiln",
            version=__version__,
            description="Generates whole software projects with an LLM, phase by phase.",
            path="/schema",
            # The document only, as JSON (also at /schema itself): Litestar's HTML viewers
            # load their scripts from public CDNs, on the origin where the page keeps the
            # API key, so Kiln serves none of them (#19).
            render_plugins=[JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    "BearerAuth": SecurityScheme(
                        type="http", scheme="bearer", description="An API key"
                    ),
                    "StreamToken": SecurityScheme(
                        type="apiKey",
                        name="token",
                        security_scheme_in="query",
                        description="A generation's short-lived SSE token (from its 201 or "
                        "/stream-token); only for its /stream",
                    ),
                }
            ),
            security=[{"BearerAuth": []}],
        ),
        debug=False,
    )
