"""Fixtures every test can use: a real nats-server on a free loopback port, and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings, load_settings
from tests.support.environment import ALICE_KEY, BOB_KEY, service_env

__all__ = ["ALICE_KEY", "BOB_KEY", "make_settings"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream, stopped (by PID) after the test."""
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.kill() if server.process and server.process.poll() is None else None
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client of this test's nats-server, with Kiln's streams created."""
    client = await nats.connect(nats_server.url)
    await ensure_streams(client.jetstream())
    yield client
    await client.close()


def make_settings(tmp_path: Path, nats_url: str, **env: str) -> Settings:
    """Settings for a test stack: its own SQLite file, two users, a fixed token secret."""
    return load_settings(service_env(tmp_path, nats_url, **env))


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    """Settings pointing at this test's nats-server and SQLite file."""
    return make_settings(tmp_path, nats_server.url)
