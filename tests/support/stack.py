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
from httpx_sse import aconnect_sse

from contracts.events import TERMINAL_TAGS
from services.common.embedded_nats import free_port
from services.common.settings import Settings
from services.gateway.app import create_app
from services.orchestrator.providers.base import Provider
from services.orchestrator.service import OrchestratorService
from services.storage.db import migrate
from services.storage.service import StorageService
from tests.conftest import ALICE_KEY, BOB_KEY

SCHEMA_ONE = {
    "entities": [
        {
            "name": "Product",
            "fields": [
                {"name": "title", "type": "string", "required": True},
                {"name": "price", "type": "decimal", "required": True},
                {"name": "in_stock", "type": "boolean", "required": False},
            ],
        }
    ]
}


def schema_with(entity_count: int) -> dict[str, Any]:
    """A valid schema of `entity_count` related entities."""
    entities = []
    for i in range(entity_count):
        fields = [
            {"name": "name", "type": "string", "required": True},
            {"name": "notes", "type": "text", "required": False},
            {"name": "amount", "type": "integer", "required": False},
        ]
        relations = (
            [{"name": "parent", "target": f"Entity{i - 1}", "kind": "many_to_one"}] if i else []
        )
        entities.append({"name": f"Entity{i}", "fields": fields, "relations": relations})
    return {"entities": entities}


class SSEEvent(msgspec.Struct, frozen=True):
    """One received SSE message."""

    id: int
    type: str
    data: dict[str, Any]


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
        self.alice = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=30
        )
        self.bob = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {BOB_KEY}"}, timeout=30
        )
        self.anonymous = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def start(self, *, orchestrator: bool = True, storage: bool = True) -> Stack:
        """Migrate the database and start the services; returns once the gateway is ready."""
        await asyncio.to_thread(migrate, self.settings.effective_database_url)
        if storage:
            self.start_storage()
        if orchestrator:
            self.start_orchestrator()
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.settings.port,
            log_config=None,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.tasks["gateway"] = asyncio.create_task(self.server.serve())
        for _ in range(400):
            with contextlib.suppress(httpx.HTTPError):
                if (await self.anonymous.get("/readyz")).status_code == 200:
                    return self
            await asyncio.sleep(0.025)
        raise RuntimeError("the gateway did not become ready")

    def start_orchestrator(self) -> None:
        """Start (or restart) the in-process orchestrator."""
        service = OrchestratorService(self.settings, self.providers)
        self.tasks["orchestrator"] = asyncio.create_task(service.run(self.stop_services))

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
        payload = {
            "project_name": "shop",
            "schema": schema or SCHEMA_ONE,
            "prompt": "a small shop",
            **body,
        }
        response = await self.alice.post("/generations", json=payload)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def iterate(self, parent_id: str, prompt: str, **body: Any) -> dict[str, Any]:
        """POST /generations/iterate as alice; the 201 body."""
        payload = {"parent_generation_id": parent_id, "modification_prompt": prompt, **body}
        response = await self.alice.post("/generations/iterate", json=payload)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def events(
        self,
        stream_url: str,
        *,
        last_event_id: int | None = None,
        limit: int | None = None,
        timeout: float = 60,
    ) -> list[SSEEvent]:
        """Read an SSE stream until it ends (or `limit` events), parsed."""
        received: list[SSEEvent] = []
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        async with asyncio.timeout(timeout):
            async with aconnect_sse(self.anonymous, "GET", stream_url, headers=headers) as source:
                source.response.raise_for_status()
                async for message in source.aiter_sse():
                    if not message.id:  # the opening `retry:` block carries no event
                        continue
                    received.append(SSEEvent(int(message.id), message.event, message.json()))
                    if limit is not None and len(received) >= limit:
                        break
        return received

    async def follow(self, stream_url: str, *, timeout: float = 60) -> AsyncIterator[SSEEvent]:
        """Follow a stream like EventSource does: reconnect with Last-Event-ID whenever the
        connection ends before the terminal event, stop at it (or at a 204)."""
        last_id: int | None = None
        async with asyncio.timeout(timeout):
            while True:
                headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
                try:
                    async with aconnect_sse(
                        self.anonymous, "GET", stream_url, headers=headers
                    ) as source:
                        if source.response.status_code == 204:
                            return
                        source.response.raise_for_status()
                        async for message in source.aiter_sse():
                            if not message.id:
                                continue
                            event = SSEEvent(int(message.id), message.event, message.json())
                            last_id = event.id
                            yield event
                            if event.type in TERMINAL_TAGS:
                                return
                except (httpx.TransportError, httpx.HTTPStatusError):
                    pass
                await asyncio.sleep(0.5)

    async def wait_status(
        self, generation_id: str, *statuses: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Poll GET /generations/{id} until its status is one of `statuses`."""
        wanted = statuses or ("completed", "failed", "cancelled")
        async with asyncio.timeout(timeout):
            while True:
                response = await self.alice.get(f"/generations/{generation_id}")
                if response.status_code == 200 and response.json()["status"] in wanted:
                    return dict(response.json())
                await asyncio.sleep(0.05)


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
