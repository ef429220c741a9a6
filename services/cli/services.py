"""`kiln orchestrator | storage | verifier | gateway`: one service in this process."""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING, Any

from services.cli.runtime import run_until_signalled
from services.common.logs import get_logger, setup_logging
from services.common.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

log = get_logger(__name__)


def run_orchestrator(settings: Settings) -> None:
    """Run one orchestrator until SIGTERM."""
    from services.orchestrator.service import OrchestratorService

    run_until_signalled(settings, "orchestrator", OrchestratorService(settings).run)


def run_storage(settings: Settings) -> None:
    """Run one storage projector until SIGTERM."""
    from services.storage.db import DatabaseNotMigrated
    from services.storage.service import StorageService

    settings.storage_partitioning()  # refuse a bad partition before connecting to anything
    try:
        run_until_signalled(settings, "storage", StorageService(settings).run)
    except DatabaseNotMigrated as exc:
        sys.exit(f"kiln storage: {exc}")


def run_verifier(settings: Settings) -> None:
    """Run one verifier until SIGTERM."""
    from services.verifier.service import VerifierService

    run_until_signalled(settings, "verifier", VerifierService(settings).run)


def gateway_config(settings: Settings, app: Litestar) -> uvicorn.Config:
    """How uvicorn serves the gateway's `app`: HTTP/1.1 with Kiln's own protocol
    (httptools, with limits on request headers and bodies), never uvicorn's choice."""
    import uvicorn

    from services.gateway.protocol import protocol_class

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(settings),
        log_config=None,
        access_log=True,
        lifespan="on",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=30,
        backlog=4096,
    )


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

    server = Server(gateway_config(settings, app))
    # Once stopped, uvicorn raises the signal it caught again with the handler it found; a
    # SIGTERM is how a gateway is meant to stop, so it then ends with code 0, not killed.
    signal.signal(signal.SIGTERM, lambda *_: None)
    log.info("Gateway listening on http://{host}:{port}", host=settings.host, port=settings.port)
    # uvicorn's own run() picks the event loop (uvloop when installed, as the other services
    # use); `asyncio.run(server.serve())` would always take the slower default loop.
    server.run()
    if not server.started:
        sys.exit("kiln gateway: the gateway could not start; the reason is logged above")
