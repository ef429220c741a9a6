"""A cluster of service processes against this test's nats-server and a migrated database:
a SQLite file, or a PostgreSQL database of its own when `KILN_TEST_POSTGRES_URL` is set."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.embedded_nats import EmbeddedNats
from tests.ops.cluster import Cluster
from tests.storage.conftest import POSTGRES_ENV, postgres_database


@pytest.fixture
async def cluster(tmp_path: Path, nats_server: EmbeddedNats) -> AsyncIterator[Cluster]:
    """An empty cluster (the database migrated); every process it starts is stopped by PID."""
    async with contextlib.AsyncExitStack() as stack:
        env: dict[str, str] = {}
        base = os.environ.get(POSTGRES_ENV)
        if base:
            env["KILN_DATABASE_URL"] = await stack.enter_async_context(postgres_database(base))
        running = Cluster(tmp_path, nats_server.url, **env)
        try:
            await asyncio.to_thread(running.migrate)
            yield running
        finally:
            await asyncio.to_thread(running.stop_all)
