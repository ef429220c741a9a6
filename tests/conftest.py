"""Fixtures every test can use: a real nats-server on a free loopback port, settings, and
the database the services of a test use (SQLite, or PostgreSQL: see tests/support/databases.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings, load_settings
from tests.support.databases import (
    BOTH_DATABASES_SUITES,
    DATABASE_ENV,
    DATABASES,
    POSTGRES_ENV,
    postgres_database_sync,
)
from tests.support.environment import ALICE_KEY, BOB_KEY, service_env

__all__ = ["ALICE_KEY", "BOB_KEY", "make_settings"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of the e2e, fault or browser suite that runs Kiln's services (it uses a
    nats-server) runs once on SQLite and once on PostgreSQL, unless it is marked
    `one_database` (what it proves does not depend on the read model's database)."""
    suite = Path(str(metafunc.definition.path)).parent.name
    fixtures = metafunc.fixturenames
    one = metafunc.definition.get_closest_marker("one_database") is not None
    if (
        suite in BOTH_DATABASES_SUITES
        and not one
        and "database" in fixtures
        and "nats_server" in fixtures
    ):
        metafunc.parametrize(
            "database",
            [
                "sqlite",
                pytest.param("postgresql", marks=pytest.mark.postgres),
            ],
            indirect=True,
        )


@pytest.fixture
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The read model's database for this test's services: "sqlite" (each test's own file,
    the default) or "postgresql" (a database of its own, dropped afterwards; skipped,
    saying so, without `KILN_TEST_POSTGRES_URL`)."""
    kind = getattr(request, "param", DATABASES[0])
    if kind == "sqlite":
        yield kind
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the PostgreSQL variant needs a server")
    with postgres_database_sync(base) as url:
        monkeypatch.setenv(DATABASE_ENV, url)
        yield kind


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
