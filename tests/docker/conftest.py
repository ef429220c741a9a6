"""The docker suite's one deployment: a Docker engine (started here if none runs), the
images compose.yaml runs built locally, and compose.yaml up with them, for the module."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from tests.docker.compose import Stack, compose_stack
from tests.docker.engine import Engine, EngineUnavailable, docker_engine
from tests.docker.images import Images, build_images

CACHE_ENV = "KILN_DOCKER_CACHE"
T = TypeVar("T")


def docker_cache() -> Path:
    """Where the Debian root file system, the engine's images and compose are kept between
    runs: KILN_DOCKER_CACHE, else /var/cache/kiln-docker for root, ~/.cache/kiln-docker."""
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/kiln-docker")
    return Path.home() / ".cache" / "kiln-docker"


class Deployment(msgspec.Struct, frozen=True):
    """compose.yaml running on images built here; `steps`: seconds each step took."""

    engine: Engine
    images: Images
    stack: Stack
    steps: dict[str, float]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Skipped, saying why ("docker: skipped because …"), where no engine can run."""
    cache = docker_cache()
    steps: dict[str, float] = {}

    def timed(step: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        result = action()
        steps[step] = round(time.monotonic() - started, 1)
        return result

    with ExitStack() as stack:
        try:
            engine = timed("engine", lambda: stack.enter_context(docker_engine(cache)))
            images = timed("images", lambda: build_images(engine, cache))
            running = timed(
                "compose up",
                lambda: stack.enter_context(
                    compose_stack(engine, images, cache, tmp_path_factory.mktemp("compose"))
                ),
            )
        except EngineUnavailable as reason:
            pytest.skip(f"docker: skipped because {reason}")
        yield Deployment(engine, images, running, steps)
