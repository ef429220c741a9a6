"""A whole Kiln stack in the test's event loop: the three services against a real
nats-server and a real SQLite file, the gateway served by uvicorn on a free port.

Tests talk to it over HTTP exactly as a client would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import uvicorn

from examples.schemas import schema_with
from services.common.embedded_nats import free_port
from services.common.settings import Settings
from services.gateway.app import create_app
from services.gateway.protocol import protocol_class
from services.orchestrator.providers.base import Provider
from services.orchestrator.service import OrchestratorService
from services.storage.db import migrate
from services.storage.service import StorageService
from services.verifier.service import VerifierService
from tests.support import client as kiln
from tests.support.client import SCHEMA_ONE, SSEEvent
from tests.support.environment import ALICE_KEY, BOB_KEY
from tests.support.waiting import eventually

__all__ = ["SCHEMA_ONE", "SSEEvent", "Stack", "running_stack", "schema_with"]


class Stack:
    """The running services and an HTTP client for each test user."""

    def __init__(self, settings: Settings, providers: dict[str, Provider] | None = None) -> None:
        port = free_port()
        self.settings = msgspec.structs.replace(settings, port=port, host="127.0.0.1")
        self.providers = providers
        self.url = f"http://127.0.0.1:{port}"
        self.stop_services = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.server: uvicorn.Server | None = None
        self.orchestrator: OrchestratorService | None = None
        self.alice = kiln.connect(self.url, ALICE_KEY)
        self.bob = kiln.connect(self.url, BOB_KEY)
        self.anonymous = kiln.connect(self.url)

    async def start(
        self, *, orchestrator: bool = True, storage: bool = True, verifier: bool = False
    ) -> Stack:
        """Migrate the database and start the services; returns once the gateway is ready."""
        await asyncio.to_thread(migrate, self.settings.effective_database_url)
        if storage:
            self.start_storage()
        if verifier:
            self.start_verifier()
        if orchestrator:
            self.start_orchestrator()
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.settings.port,
            http=protocol_class(self.settings),
            log_config=None,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.tasks["gateway"] = asyncio.create_task(self.server.serve())

        async def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await self.anonymous.get("/readyz")).status_code == 200
            return False

        await eventually(ready, 20, 0.025, what="the gateway to become ready")
        if orchestrator:  # it has advertised its providers, which the gateway checks
            await eventually(
                lambda: self.orchestrator is not None and self.orchestrator.ready.is_set(),
                20,
                0.025,
                what="the orchestrator to start",
            )
        return self

    def start_orchestrator(self) -> None:
        """Start (or restart) the in-process orchestrator."""
        self.orchestrator = OrchestratorService(self.settings, self.providers)
        self.tasks["orchestrator"] = asyncio.create_task(self.orchestrator.run(self.stop_services))

    def start_verifier(self) -> None:
        """Start (or restart) an in-process verifier (its sandboxes are real processes)."""
        self.tasks["verifier"] = asyncio.create_task(
            VerifierService(self.settings).run(self.stop_services)
        )

    def start_storage(self) -> None:
        """Start (or restart) the in-process storage projector."""
        self.tasks["storage"] = asyncio.create_task(
            StorageService(self.settings).run(self.stop_services)
        )

    async def stop(self) -> None:
        """Stop everything started, and close the clients."""
        self.stop_services.set()
        if self.server is not None:
            gateway = (
                self.server.config.app.state.get("gateway")
                if hasattr(self.server.config.app, "state")
                else None
            )
            if gateway is not None:
                gateway.stop_streams()
            self.server.should_exit = True
        results = await asyncio.wait_for(
            asyncio.gather(*self.tasks.values(), return_exceptions=True), 30
        )
        for client in (self.alice, self.bob, self.anonymous):
            await client.aclose()
        for name, result in zip(self.tasks, results, strict=True):
            if isinstance(result, Exception):
                raise RuntimeError(f"the {name} service failed") from result

    async def create(self, schema: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        """POST /generations as alice; the 201 body."""
        return await kiln.create(self.alice, schema, **body)

    async def create_completed(
        self, schema: dict[str, Any] | None = None, *, timeout: float = 60, **body: Any
    ) -> dict[str, Any]:
        """POST /generations as alice and wait until the generation completed; the 201 body."""
        return await kiln.create_completed(self.alice, schema, timeout=timeout, **body)

    async def iterate(self, parent_id: str, prompt: str, **body: Any) -> dict[str, Any]:
        """POST /generations/iterate as alice; the 201 body."""
        return await kiln.iterate(self.alice, parent_id, prompt, **body)

    async def events(
        self,
        stream_url: str,
        *,
        last_event_id: int | None = None,
        limit: int | None = None,
        timeout: float = 60,
    ) -> list[SSEEvent]:
        """Read an SSE stream (its token in the URL) until it ends (or `limit` events)."""
        return await kiln.read_events(
            self.anonymous, stream_url, last_event_id=last_event_id, limit=limit, timeout=timeout
        )

    def follow(self, stream_url: str, *, timeout: float = 60) -> AsyncIterator[SSEEvent]:
        """Follow a stream like EventSource does, reconnecting with Last-Event-ID, to its
        terminal event (or a 204)."""
        return kiln.follow(self.anonymous, stream_url, timeout=timeout)

    async def wait_status(
        self, generation_id: str, *statuses: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Poll GET /generations/{id} as alice until its status is one of `statuses`."""
        return await kiln.wait_status(self.alice, generation_id, *statuses, timeout=timeout)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, providers: dict[str, Provider] | None = None, **kwargs: Any
) -> AsyncIterator[Stack]:
    """A started stack, stopped at the end."""
    stack = await Stack(settings, providers).start(**kwargs)
    try:
        yield stack
    finally:
        await stack.stop()
