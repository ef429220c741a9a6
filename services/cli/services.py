"""`kiln orchestrator | storage | gateway`: one service in this process."""

from __future__ import annotations

import asyncio
from typing import Any

from services.cli.runtime import run_until_signalled
from services.common.logs import get_logger, setup_logging
from services.common.settings import Settings

log = get_logger(__name__)


def run_orchestrator(settings: Settings) -> None:
    """Run one orchestrator until SIGTERM."""
    from services.orchestrator.service import OrchestratorService

    run_until_signalled(settings, "orchestrator", OrchestratorService(settings).run)


def run_storage(settings: Settings) -> None:
    """Run one storage projector until SIGTERM."""
    from services.storage.service import StorageService

    run_until_signalled(settings, "storage", StorageService(settings).run)


def run_gateway(settings: Settings) -> None:
    """Serve the gateway with uvicorn until SIGTERM; open SSE streams end first."""
    import uvicorn

    from services.gateway.app import create_app

    setup_logging(settings.log_format, settings.log_level, settings.secret_values())
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # End the SSE streams first, so uvicorn is not left waiting for them and the
            # clients reconnect (to another replica) with Last-Event-ID.
            gateway = app.state.get("gateway")
            if gateway is not None:
                gateway.stop_streams()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=True,
        lifespan="on",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=30,
        backlog=4096,
    )
    server = Server(config)
    log.info("Gateway listening on http://{host}:{port}", host=settings.host, port=settings.port)
    asyncio.run(server.serve())
