"""Running one service as a process: logs, signals, a clean stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from services.common.logs import get_logger, setup_logging
from services.common.settings import Settings

log = get_logger(__name__)


def run_until_signalled(
    settings: Settings, name: str, main: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    """Run `main(stop)` until SIGINT or SIGTERM sets `stop`; log setup first."""
    setup_logging(settings.log_format, settings.log_level, settings.secret_values())

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("Starting {service}", service=name)
        await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
