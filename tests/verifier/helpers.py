"""Shared by the verifier's tests: tiny projects, the sandbox they run in, host snapshots."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

from services.verifier.runtime import load_runtime
from services.verifier.sandbox import Limits, Sandbox

PYPROJECT = """[project]
name = "hostile"
version = "0.1.0"
dependencies = []

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_default_fixture_loop_scope = "function"
"""
# Small limits so that a hostile run meets them in seconds. The wall clock is generous:
# on a loaded machine starting pytest alone can take several seconds, and only the tests
# about the deadline (DEADLINE_LIMITS) should ever see it.
LIMITS = Limits(
    wall_s=60.0,
    cpu_s=10,
    memory_bytes=1024 * 1024 * 1024,
    processes=32,
    disk_bytes=32 * 1024 * 1024,
)
# For the tests about the wall-clock deadline only: a run that never ends is killed at 4 s.
DEADLINE_LIMITS = dataclasses.replace(LIMITS, wall_s=4.0)
SECRETS = {
    "GEMINI_API_KEY": "gemini-" + "verifier-test-secret",
    "KILN_SECRET": "kiln-" + "verifier-test-secret",
    "NATS_URL": "nats://verifier-test-secret@127.0.0.1:4222",
}


def project(test_source: str, **extra: str) -> dict[str, str]:
    """A project whose only test module is `test_source`."""
    return {
        "pyproject.toml": PYPROJECT,
        "tests/__init__.py": "",
        "tests/test_it.py": textwrap.dedent(test_source).lstrip(),
        **extra,
    }


def make_sandbox(limits: Limits = LIMITS, slots: int = 1) -> Sandbox:
    """The real sandbox with the real verify runtime."""
    return Sandbox(load_runtime(), limits, slots=slots)


def host_snapshot(paths: list[Path]) -> dict[Path, tuple[int, int] | None]:
    """(size, mtime_ns) of each path, None when absent: what a run must not change."""
    state: dict[Path, tuple[int, int] | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
            state[path] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            state[path] = None
    return state


def outside_paths() -> list[Path]:
    """Where a hostile project tries to write, seen from the host."""
    return [Path("/tmp/x"), Path("/x"), Path("/sandbox"), Path.home() / ".bashrc"]
