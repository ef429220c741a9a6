"""A version verified end to end in the real sandbox with the real runtime."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from examples.schemas import schema_with
from services.common.settings import load_settings
from services.orchestrator.providers.offline import OfflineProvider
from services.verifier.checks import STAGING_PREFIX, stage, sweep_stale_staging, verify
from services.verifier.reports import parse_junit
from services.verifier.sandbox import Limits
from services.verifier.service import limits_of
from tests.orchestrator.providers.offline.helpers import SHOP, generate
from tests.verifier.helpers import make_sandbox, project

pytestmark = pytest.mark.timeout(180)


async def test_an_offline_project_passes_with_the_counts_of_pytest_outside(
    tmp_path: Path,
) -> None:
    files = (await generate(OfflineProvider(), document=SHOP)).files
    sandbox = make_sandbox(Limits(wall_s=120.0))

    result = await verify(
        files, sandbox, generation_id="g-shop", project_id="p-1", round=0, verifier="test"
    )

    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    stage(files, outside_dir)
    junit = tmp_path / "junit.xml"
    process = await asyncio.create_subprocess_exec(
        str(sandbox.runtime.python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}",
        cwd=outside_dir,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await process.wait() == 0
    outside = parse_junit(junit.read_bytes())
    assert result.outcome == "completed", result.reason
    assert not result.reason, result.output_tail
    assert (result.passed, result.failed, result.errors, result.skipped) == (
        outside.passed,
        outside.failed,
        outside.errors,
        outside.skipped,
    )
    assert result.passed >= 20 and result.failed == 0 and result.errors == 0
    assert result.tests_passed and not result.timed_out and result.exit_code == 0
    assert result.compile_errors == []
    assert result.verifier == "test" and result.generation_id == "g-shop"


# B7's largest project (100 entities, 1,098 tests): its own suite passes in the sandbox
# within the default limits. It took ~17 minutes when every generated test built the whole
# application and its tables.
LARGE = 100


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_100_entity_offline_project_verifies_within_the_default_limits() -> None:
    files = (await generate(OfflineProvider(), document=schema_with(LARGE))).files
    tests = sum(c.count("\ndef test_") for p, c in files.items() if p.startswith("tests/test_"))
    limits = limits_of(load_settings({}))

    started = time.monotonic()
    result = await verify(
        files, make_sandbox(limits), generation_id="g-large", project_id="p-1", round=0,
        verifier="test",
    )  # fmt: skip
    took = time.monotonic() - started

    print(f"{LARGE} entities: {result.passed} tests verified in {took:.1f} s")
    assert result.outcome == "completed", result.reason
    assert not result.reason and not result.timed_out, result.output_tail
    assert (result.passed, result.failed, result.errors) == (tests, 0, 0)
    assert result.tests_passed and result.exit_code == 0
    assert result.lint_findings == result.format_findings == 0
    assert took < limits.wall_s


async def test_a_dependency_outside_the_runtime_is_unverified_and_nothing_runs(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    files = project(f"def test_x():\n    open({str(marker)!r}, 'w')\n")
    files["pyproject.toml"] = files["pyproject.toml"].replace(
        "dependencies = []", 'dependencies = ["litestar", "django>=5"]'
    )
    files["requirements.txt"] = "numpy==2.0\n"

    result = await verify(
        files, make_sandbox(), generation_id="g-1", project_id="p-1", round=2, verifier="t"
    )

    assert result.outcome == "unavailable"
    assert result.reason == "unverified: needs django, numpy"
    assert result.round == 2 and result.passed == result.failed == 0
    assert not marker.exists()


async def test_failures_lint_format_and_compile_errors_are_reported() -> None:
    files = project(
        """
        import os
        def test_good():
            assert True
        def test_bad():
            assert 1 + 1 == 3, "arithmetic"
        """,
        **{"app/broken.py": "def f(:\n    pass\n", "app/__init__.py": ""},
    )

    result = await verify(
        files, make_sandbox(), generation_id="g-1", project_id="p-1", round=0, verifier="t"
    )

    assert result.outcome == "completed"
    assert (result.passed, result.failed) == (1, 1)
    [failure] = result.failures
    assert failure.test_id == "tests/test_it.py::test_bad"
    assert "arithmetic" in failure.message
    assert result.compile_errors and result.compile_errors[0].startswith("app/broken.py:1:")
    assert result.lint_findings >= 2  # the unused import, the syntax error
    assert any("F401" in d for d in result.lint_details)
    assert result.format_findings >= 1
    assert not result.tests_passed


async def test_a_project_without_tests_says_so() -> None:
    files = {"pyproject.toml": "[project]\nname = 'x'\n", "main.py": "print('hi')\n"}

    result = await verify(
        files, make_sandbox(), generation_id="g-1", project_id="p-1", round=0, verifier="t"
    )

    assert result.outcome == "completed"
    assert result.passed == 0 and result.exit_code == 5
    assert result.reason == "no tests were collected"


def test_the_staging_directories_of_verifiers_that_are_gone_are_swept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{STAGING_PREFIX}{gone.pid}-abc"
    (stale / "tests").mkdir(parents=True)
    (stale / "tests" / "test_it.py").write_text("x = 1\n")
    mine = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-def"
    mine.mkdir()
    other = tmp_path / f"{STAGING_PREFIX}unsandboxed-ghi"
    other.mkdir()

    assert sweep_stale_staging(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
