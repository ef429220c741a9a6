"""The gateway's long-lived parts, created at start-up and shared by every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext

from services.common.settings import Settings
from services.gateway.auth import ApiKeys
from services.gateway.commands import Commands
from services.gateway.hub import Hub
from services.gateway.outflow import OutflowBudget
from services.gateway.quotas import StreamSlots
from services.gateway.sse import StreamStats
from services.gateway.tokens import TokenSigner
from services.gateway.views import Views
from services.storage.queries import ReadModel


@dataclass
class Gateway:
    """Everything a request handler may need."""

    settings: Settings
    nc: Client
    js: JetStreamContext
    read_model: ReadModel
    views: Views
    commands: Commands
    hub: Hub
    keys: ApiKeys
    tokens: TokenSigner
    stream_slots: StreamSlots
    outflow: OutflowBudget = field(default_factory=OutflowBudget)
    stats: StreamStats = field(default_factory=StreamStats)
    stopping: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def stop_streams(self) -> None:
        """Tell every open SSE stream to end (clients reconnect with Last-Event-ID)."""
        if not self.stopping.done():
            self.stopping.set_result(None)
            # Called from a signal handler too: wake the watchers from the loop.
            self.stopping.get_loop().call_soon(self.hub.wake_all)
