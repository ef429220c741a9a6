"""Where B7's time goes: each sandbox run of a verification timed apart, the sandbox's
fixed cost, and the same pytest outside with `tmp_path` on disk and on a tmpfs.

    python -m bench.b7_steps 20 [runs]   # an offline project of 20 entities
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.scenarios.b7_verify import PYTEST, offline_project
from services.verifier.checks import COMPILE_SCRIPT, stage
from services.verifier.runtime import load_runtime
from services.verifier.sandbox import REPORT, Limits, Sandbox


async def _timed(run: Awaitable[object]) -> float:
    started = time.monotonic()
    await run
    return time.monotonic() - started


async def _outside(argv: list[str], cwd: Path) -> int:
    """A run as the sandbox's: its own session, no bytecode written."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        start_new_session=True,
    )
    return await process.wait()


async def _one_run(sandbox: Sandbox, root: Path, shm: Path) -> dict[str, float]:
    python = str(sandbox.runtime.python)
    ruff = str(sandbox.runtime.bin_dir / "ruff")
    lint = [ruff, "check", "--no-cache", "--exit-zero", "--output-format", "json"]
    measured: dict[str, Callable[[], Awaitable[object]]] = {
        "sandbox: python -c pass": lambda: sandbox.run([python, "-c", "pass"], root),
        "outside: python -c pass": lambda: _outside([python, "-c", "pass"], root),
        "sandbox: writable copy, /bin/true": lambda: sandbox.run(
            ["/bin/true"], root, writable=True
        ),
        "sandbox: compile check": lambda: sandbox.run([python, "-I", "-c", COMPILE_SCRIPT], root),
        "sandbox: ruff check": lambda: sandbox.run([*lint, "--output-file", REPORT, "."], root),
        "sandbox: ruff format --check": lambda: sandbox.run(
            [ruff, "format", "--check", "--no-cache", "."], root
        ),
        "sandbox: pytest": lambda: sandbox.run([python, *PYTEST], root, writable=True),
        "outside: pytest, tmp_path on disk": lambda: _outside([python, *PYTEST], root),
        "outside: pytest, tmp_path on tmpfs": lambda: _outside(
            [python, *PYTEST, f"--basetemp={shm / 't'}"], root
        ),
    }
    return {name: await _timed(run()) for name, run in measured.items()}


async def steps(entities: int, runs: int) -> dict[str, list[float]]:
    """Seconds per step and run."""
    sandbox = Sandbox(load_runtime(), Limits(wall_s=3600.0))
    files = await offline_project(entities)
    found: dict[str, list[float]] = {}
    for _ in range(runs):
        root = Path(tempfile.mkdtemp(prefix="kiln-b7-steps-"))
        shm = Path(tempfile.mkdtemp(prefix="kiln-b7-steps-", dir="/dev/shm"))
        try:
            stage(files, root)
            for name, seconds in (await _one_run(sandbox, root, shm)).items():
                found.setdefault(name, []).append(seconds)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)
    return found


def main() -> None:
    """Print the median and the runs of each step."""
    entities = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for name, values in asyncio.run(steps(entities, runs)).items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{entities} entities | {name:<36} | median {statistics.median(values):.2f} s | {shown}"
        )


if __name__ == "__main__":
    main()
