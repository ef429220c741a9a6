"""B7 verification: the sandboxed test run of offline projects of 1, 20 and 100 entities
(`services.verifier.sandbox`, bubblewrap, the real verify runtime), against running the
same pytest outside the sandbox, on the same files, in the same run. Goal: the sandbox
costs at most 1.2x plus 150 ms per run. The whole verification (compile check, ruff check,
ruff format and the tests, each in its own sandbox) is reported beside it.

The baseline runs as the sandbox does, apart from the sandbox itself: in a session of its
own (the verifier starts each sandbox in a new session, which on a kernel with autogroup
scheduling is also a CPU share of its own) and with PYTHONDONTWRITEBYTECODE=1 (so neither
side finds the other's bytecode). `KILN_BENCH_B7_ENTITIES=1,20,100` measures those sizes (a
project's suite builds its application once and empties the tables between tests, so a
100-entity project's 1,098 tests take ~33 CPU-seconds a pytest run, against ~23 CPU-minutes
when every test built the application)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.report import Measurements, Row, times
from bench.scenarios import Context
from contracts.phases import PHASE_NAMES, PHASES
from contracts.schema import ProjectSchema
from services.orchestrator.providers.base import LlmCall, PhaseRequest
from services.orchestrator.providers.offline import OfflineProvider
from services.verifier.checks import stage, verify
from services.verifier.runtime import load_runtime
from services.verifier.sandbox import Limits, Sandbox

TITLE = "B7 verification"
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]


class _Quiet:
    async def progress(self, **_: object) -> None:
        pass

    async def llm_called(self, _: LlmCall) -> None:
        pass

    async def retrying(self, **_: object) -> None:
        pass

    def cancelled(self) -> bool:
        return False


async def offline_project(entities: int) -> dict[str, str]:
    """The files the offline provider writes for `entities` related entities."""
    import msgspec

    from bench.scenarios.b6_end_to_end import schema_with

    schema = msgspec.convert(schema_with(entities), ProjectSchema)
    provider = OfflineProvider()
    files: dict[str, str] = {}
    for phase in PHASE_NAMES:
        output = await provider.run_phase(
            PhaseRequest(
                generation_id="bench", project_name="bench", phase=phase, plan=list(PHASES),
                kind="create", prompt="", schema=schema, files=dict(files), parent_files={},
                locked_paths=[], correction=None,
            ),
            _Quiet(),
        )  # fmt: skip
        files.update({f.path: f.content for f in output.files})
    return files


async def _outside(python: str, project: Path) -> float:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        python,
        *PYTEST,
        cwd=project,
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        start_new_session=True,
    )
    code = await process.wait()
    if code != 0:
        raise RuntimeError(f"pytest outside the sandbox exited with {code}")
    return time.monotonic() - started


def sizes() -> tuple[int, ...]:
    """The project sizes to measure: 1 entity, or KILN_BENCH_B7_ENTITIES (e.g. 1,20,100).

    Only 1 entity by default, so that `./kiln bench` ends within issue 18's 10 minutes: each
    run of a size is three pytest runs (outside, sandboxed, the whole verification)."""
    chosen = os.environ.get("KILN_BENCH_B7_ENTITIES", "")
    return tuple(int(n) for n in chosen.split(",") if n.strip()) or (1,)


async def run(ctx: Context) -> list[Row]:
    runtime = load_runtime()
    sandbox = Sandbox(runtime, Limits(wall_s=600.0))
    await sandbox.probe()
    rows = []
    for entities in (1,) if ctx.toy else sizes():
        files = await offline_project(entities)
        root = Path(tempfile.mkdtemp(prefix="kiln-b7-", dir=ctx.dir("b7")))
        try:
            stage(files, root)
            tests, whole = Measurements(), Measurements()
            for _ in range(ctx.runs):
                baseline = await _outside(str(runtime.python), root)
                started = time.monotonic()
                run = await sandbox.run([str(runtime.python), *PYTEST], root, writable=True)
                sandboxed = time.monotonic() - started
                if run.exit_code != 0:
                    raise RuntimeError(f"sandboxed pytest exited with {run.exit_code}")
                result = await verify(
                    files, sandbox, generation_id="bench", project_id="bench", round=0,
                    verifier="bench",
                )  # fmt: skip
                tests.add(sandboxed, baseline)
                whole.add(result.duration_ms / 1000, baseline)
                ctx.log(
                    f"B7 {entities} entities: sandboxed {sandboxed:.2f} s, outside "
                    f"{baseline:.2f} s, whole verification {result.duration_ms / 1000:.2f} s "
                    f"({result.passed} passed)"
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        budget = [b * 1.2 + 0.15 for b in tests.baseline]
        met = all(k <= limit for k, limit in zip(tests.kiln, budget, strict=True))
        rows.append(
            Row(
                f"{TITLE}, {entities} entities",
                f"{tests.kiln_median:.2f} s",
                f"{tests.baseline_median:.2f} s",
                times(tests.ratio),
                "≤ 1.2x + 150 ms",
                met,
                [
                    f"pytest in the sandbox / outside, runs: {tests.spread('{:.2f}')} s; the "
                    f"whole verification (compile, ruff check, ruff format, tests): "
                    f"{whole.kiln_median:.2f} s ({times(whole.ratio)} the bare pytest)"
                ],
            )
        )
    return rows
