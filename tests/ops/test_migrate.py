"""`kiln migrate` as an operator runs it, and the services refusing an unmigrated database."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from nats.js.api import StoreCompression
from sqlalchemy.engine import make_url

from contracts import streams, subjects
from services.common.embedded_nats import EmbeddedNats, NatsCluster, free_port
from services.common.eventlog import read_subject
from services.storage.db import (
    alembic_config,
    check_migrated,
    create_engine,
    current_revision,
    head_revision,
)
from tests.conftest import ALICE_KEY
from tests.storage.conftest import database_url  # noqa: F401  (the fixture, both backends)
from tests.support.environment import process_env
from tests.support.processes import ROOT
from tests.support.stream_fixture import RELEASE_0_1_0, load_release_log, log_path, read_messages

NOT_MIGRATED = "is not migrated: run `kiln migrate`"


def kiln(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `kiln <args>` as a process; its result."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=process_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def revisions() -> list[str]:
    """Every migration, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def test_kiln_migrate_upgrades_an_empty_database(
    database_url: str,  # noqa: F811
    nats_server: EmbeddedNats,
) -> None:
    env = {"KILN_DATABASE_URL": database_url, "NATS_URL": nats_server.url}
    result = await asyncio.to_thread(kiln, "migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "Database is up to date" in result.stdout
    password = make_url(database_url).password
    assert not password or password not in result.stdout
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == head_revision()
        await check_migrated(engine)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("first", range(len(revisions())))
async def test_kiln_migrate_upgrades_from_every_earlier_revision(
    database_url: str,  # noqa: F811
    nats_server: EmbeddedNats,
    first: int,
) -> None:
    revision = revisions()[first]
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == revision
        env = {"KILN_DATABASE_URL": database_url, "NATS_URL": nats_server.url}
        result = await asyncio.to_thread(kiln, "migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert await current_revision(engine) == head_revision()
        await check_migrated(engine)
    finally:
        await engine.dispose()


async def test_kiln_migrate_brings_a_broker_of_release_0_1_0_up_to_date(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        # KILN_EVENTS as release 0.1.0 made it (uncompressed), holding that release's log.
        await js.add_stream(dataclasses.replace(streams.events_stream(), compression=None))
        messages = read_messages(log_path(RELEASE_0_1_0))
        last = await load_release_log(js, messages, create_streams=False)
        env = {
            "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}",
            "NATS_URL": nats_server.url,
        }
        result = await asyncio.to_thread(kiln, "migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert f"Stream KILN_EVENTS is up to date: {last} messages" in result.stdout
        assert "Stream KILN_BLOBS is up to date: 0 messages" in result.stdout
        events = await js.stream_info(streams.EVENTS_STREAM)
        assert events.config.compression == StoreCompression.S2
        assert events.state.messages == len(messages) and events.state.last_seq == last
        blobs = await js.stream_info(streams.BLOBS_STREAM)
        assert blobs.config.compression == StoreCompression.S2
        # The old log reads back whole (tests/compat checks what it means).
        raw = await read_subject(js, subjects.ALL_EVENTS, after_stream_seq=0, upto_stream_seq=last)
        assert [data for _, data in raw] == [m.data.encode() for m in messages]
    finally:
        await nc.close()


def test_kiln_migrate_without_a_broker_says_the_streams_were_not_migrated(tmp_path: Path) -> None:
    env = {
        "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    result = kiln("migrate", "--wait", "1", env=env)
    assert result.returncode == 1
    assert "Database is up to date" in result.stdout
    assert "Waiting for the broker at nats://127.0.0.1:" in result.stdout, result.stdout
    assert "the streams were not migrated" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_kiln_migrate_started_before_a_clusters_nodes_waits_for_them(tmp_path: Path) -> None:
    """As under compose, or CI starting a cluster: `kiln migrate` runs before the nodes
    listen, and before JetStream has a meta leader and knows its peers (streams at 3
    replicas). It says that it waits, waits, and migrates; no traceback, no retry by hand."""
    nodes = NatsCluster(tmp_path / "nats")
    env = {
        "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}",
        "NATS_URL": nodes.url,
        "KILN_STREAM_REPLICAS": "3",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "migrate", "--wait", "90"],
        cwd=ROOT,
        env=process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        said = [process.stdout.readline() for _ in range(2)]
        assert "Database is up to date" in said[0], said
        # Only now do the nodes start: the command got there first, for certain.
        assert said[1].startswith(f"Waiting for the broker at {nodes.url.replace(',', ', ')}")
        nodes.start()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
        nodes.stop()
    assert process.returncode == 0, out + err
    assert "Traceback" not in err, err
    described = [line for line in out.splitlines() if line.startswith("Stream ")]
    assert [line.split()[1] for line in described] == [m().name for m in streams.ALL_STREAMS]
    assert all(line.endswith(", 3 replica(s)") for line in described), out


def test_storage_refuses_a_missing_sqlite_file_and_leaves_none_behind(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "kiln.db"
    env = {
        "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    result = kiln("storage", env=env)
    assert result.returncode != 0
    assert NOT_MIGRATED in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not path.exists() and not path.parent.exists()


def test_storage_refuses_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    path.touch()
    env = {
        "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    result = kiln("storage", env=env)
    assert result.returncode != 0
    assert NOT_MIGRATED in result.stderr, result.stderr


def test_gateway_refuses_an_unmigrated_database(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    path = tmp_path / "kiln.db"
    env = {
        "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "NATS_URL": nats_server.url,
        "KILN_API_KEYS": f"alice:{ALICE_KEY}",
        "KILN_SECRET": "ops-test-secret-not-for-production",
        "KILN_HOST": "127.0.0.1",
        "KILN_PORT": str(free_port()),
    }
    result = kiln("gateway", env=env)
    assert result.returncode != 0
    assert NOT_MIGRATED in result.stderr, result.stderr
    assert not path.exists()
