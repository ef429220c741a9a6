"""`kiln migrate` as an operator runs it, and the services refusing an unmigrated database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from services.common.embedded_nats import EmbeddedNats, free_port
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


async def test_kiln_migrate_upgrades_an_empty_database(database_url: str) -> None:  # noqa: F811
    result = await asyncio.to_thread(kiln, "migrate", env={"KILN_DATABASE_URL": database_url})
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
    first: int,
) -> None:
    revision = revisions()[first]
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == revision
        result = await asyncio.to_thread(kiln, "migrate", env={"KILN_DATABASE_URL": database_url})
        assert result.returncode == 0, result.stderr
        assert await current_revision(engine) == head_revision()
        await check_migrated(engine)
    finally:
        await engine.dispose()


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
