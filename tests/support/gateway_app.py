"""The gateway application as `create_app` composes it, on Litestar's test client, with
the two boundaries it talks to in memory: a `FakeJetStream` for the broker and a
`FoldedReadModel` for storage's read model. Everything else is the real thing: the
routes, views, commands, contracts, auth and the error map. `finish` appends what an
orchestrator would, so a generation can be completed without one."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from litestar.testing import AsyncTestClient

from contracts.events import FileDeleted, FileWritten, GenerationCompleted, GenerationStarted
from contracts.phases import PHASES
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings, load_settings
from services.gateway.app import compose, create_app
from services.gateway.auth import ApiKeys
from services.gateway.errors import PROBLEM_JSON
from services.gateway.hub import Hub
from services.gateway.state import Gateway
from services.gateway.tokens import TokenSigner
from tests.fakes.jetstream import FakeJetStream
from tests.fakes.read_model import FoldedReadModel
from tests.support.environment import ALICE_KEY, BOB_KEY

ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


@dataclass
class GatewayUnderTest:
    """The test client, and the fakes behind the gateway."""

    client: AsyncTestClient[Any]
    broker: FakeJetStream
    read_model: FoldedReadModel

    async def finish(
        self,
        generation_id: str,
        files: dict[str, str],
        deleted: dict[str, str] | None = None,
    ) -> None:
        """Append an orchestrator's events: started, the files, completed."""
        writer = GenerationWriter.after(
            cast(Any, self.broker),
            await read_generation(cast(Any, self.broker), generation_id),
            source="test",
        )
        await writer.emit(GenerationStarted, plan=list(PHASES), worker="test", provider="offline")
        for path, content in files.items():
            data = content.encode()
            await writer.emit(
                FileWritten,
                path=path,
                content=content,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                phase="models",
            )
        for path, reason in (deleted or {}).items():
            await writer.emit(FileDeleted, path=path, reason=reason, phase="models")
        await writer.emit(
            GenerationCompleted,
            file_count=len(files),
            total_bytes=sum(len(c.encode()) for c in files.values()),
            duration_ms=1,
            progress=100,
        )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The problem+json body of an error answer, checked: status, title, detail, and the
    request's path as `instance`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def gateway_settings(**env: str) -> Settings:
    """Settings for two users, alice and bob, plus `env` (KILN_* names)."""
    return load_settings(
        {"KILN_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}", "KILN_SECRET": "s" * 32, **env}
    )


@asynccontextmanager
async def gateway_app(settings: Settings | None = None) -> AsyncIterator[GatewayUnderTest]:
    """The gateway app on an `AsyncTestClient`, over an in-memory broker and read model."""
    broker = FakeJetStream()
    read_model = FoldedReadModel(broker)
    nc = SimpleNamespace(is_connected=True)

    @asynccontextmanager
    async def parts(
        settings: Settings, keys: ApiKeys, tokens: TokenSigner
    ) -> AsyncIterator[Gateway]:
        js: Any = broker
        yield compose(
            settings,
            keys,
            tokens,
            nc=cast(Any, nc),
            js=js,
            read_model=read_model,
            hub=Hub(cast(Any, nc), js),
        )

    app = create_app(settings or gateway_settings(), parts)
    async with AsyncTestClient(app) as client:
        yield GatewayUnderTest(client, broker, read_model)
