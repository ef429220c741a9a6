"""One verification: a version's files checked in the sandbox, and the result.

In order: the project's declared dependencies must all be in the verify runtime (else the
version is `unverified: needs <name>` and nothing runs); then, each in its own sandbox
run, a byte-compile of every `.py` file, `ruff check` and `ruff format --check` (their
findings are reported, not fatal) and the project's own tests with `python -m pytest`
(JUnit XML, a wall-clock limit).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from contracts.events import FailedTest, utc_now
from contracts.paths import is_safe_path
from contracts.verification import MAX_OUTPUT_TAIL_CHARS, VerifyResult
from services.common.logs import get_logger
from services.common.processes import pid_alive
from services.verifier.reports import (
    LintReport,
    ReportError,
    TestCounts,
    cap,
    parse_compile,
    parse_junit,
    parse_ruff_check,
    parse_ruff_format,
)
from services.verifier.sandbox import REPORT, Sandbox, SandboxRun

log = get_logger(__name__)
T = TypeVar("T")

LINT_WALL_S = 60.0
STAGING_PREFIX = "kiln-verify-"
# Reads every .py file under the working directory; prints the ones that do not compile.
COMPILE_SCRIPT = """
import json, os
errors = []
for top, dirs, names in os.walk("."):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
        if not name.endswith(".py"):
            continue
        path = os.path.join(top, name)[2:]
        try:
            with open(path, "rb") as fh:
                compile(fh.read(), path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{path}:{exc.lineno or 0}: {exc.msg}")
        except (ValueError, OSError, MemoryError, RecursionError) as exc:
            errors.append(f"{path}: {exc}")
print(json.dumps(errors))
"""


def staging_dir() -> Path:
    """A fresh host directory for one version's files, named after this verifier's pid."""
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))


def sweep_stale_staging(parent: Path | None = None) -> list[Path]:
    """Remove the staging directories of verifiers that are gone (one SIGKILLed mid-run
    cannot remove its own); returns what was removed."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = path.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)) or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def stage(files: dict[str, str], root: Path) -> None:
    """Write the version's files under `root`, readable by the sandbox's uid."""
    os.chmod(root, 0o755)
    for path, content in files.items():
        if not is_safe_path(path):
            raise ValueError(f"unsafe path in the version: {path!r}")
        target = root / path
        for parent in reversed(target.relative_to(root).parents[:-1]):
            directory = root / parent
            if not directory.exists():
                directory.mkdir(mode=0o755)
                os.chmod(directory, 0o755)
        target.write_text(content, encoding="utf-8")
        os.chmod(target, 0o644)


async def verify(
    files: dict[str, str],
    sandbox: Sandbox,
    *,
    generation_id: str,
    project_id: str,
    round: int,
    verifier: str,
) -> VerifyResult:
    """Verify one version; always a result (`unavailable` with a reason when nothing ran)."""
    started = time.monotonic()

    def unavailable(reason: str) -> VerifyResult:
        return VerifyResult(
            generation_id=generation_id,
            project_id=project_id,
            round=round,
            outcome="unavailable",
            reason=reason,
            duration_ms=int((time.monotonic() - started) * 1000),
            verifier=verifier,
            at=utc_now(),
        )

    missing = sandbox.runtime.missing(files)
    if missing:
        return unavailable(f"unverified: needs {', '.join(missing)}")
    if not any(p.endswith(".py") for p in files):
        return unavailable("unverified: the version has no Python files")
    root = staging_dir()
    try:
        stage(files, root)
        python, ruff = str(sandbox.runtime.python), str(sandbox.runtime.bin_dir / "ruff")
        lint_wall = min(LINT_WALL_S, sandbox.limits.wall_s)
        compiled = await sandbox.run([python, "-I", "-c", COMPILE_SCRIPT], root, wall_s=lint_wall)
        lint = await sandbox.run(
            [ruff, "check", "--no-cache", "--exit-zero", "--output-format", "json",
             "--output-file", REPORT, "."],
            root,
            wall_s=lint_wall,
        )  # fmt: skip
        formatting = await sandbox.run(
            [ruff, "format", "--check", "--no-cache", "."], root, wall_s=lint_wall
        )
        tests = await sandbox.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={REPORT}",
             "-o", "junit_family=xunit2", "-o", "junit_logging=no"],
            root,
            writable=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)

    notes: list[str] = []
    no_errors: list[str] = []
    compile_errors = _or_note(
        notes, "compile check", compiled, lambda: parse_compile(compiled.stdout), no_errors
    )
    lint_report = _or_note(
        notes, "ruff check", lint, lambda: parse_ruff_check(lint.report), LintReport(0, [])
    )
    format_findings = parse_ruff_format(formatting.stdout + formatting.stderr)
    counts, reason = _test_counts(tests, sandbox.limits.wall_s)
    if reason:
        notes.insert(0, reason)
    return VerifyResult(
        generation_id=generation_id,
        project_id=project_id,
        round=round,
        outcome="completed",
        reason="; ".join(notes),
        passed=counts.passed,
        failed=counts.failed,
        errors=counts.errors,
        skipped=counts.skipped,
        duration_ms=int((time.monotonic() - started) * 1000),
        timed_out=tests.timed_out,
        exit_code=tests.exit_code,
        lint_findings=lint_report.findings,
        format_findings=format_findings,
        lint_details=lint_report.details,
        compile_errors=compile_errors,
        failures=counts.failures,
        output_tail=_tail(tests.output),
        verifier=verifier,
        at=utc_now(),
    )


def _or_note(notes: list[str], what: str, run: SandboxRun, parse: Callable[[], T], default: T) -> T:
    if run.timed_out:
        notes.append(f"the {what} did not finish in time")
        return default
    try:
        return parse()
    except ReportError as exc:
        notes.append(f"the {what} gave no report ({exc}): {cap(run.stderr.strip(), 300)}")
        return default


def _test_counts(run: SandboxRun, wall_s: float) -> tuple[TestCounts, str]:
    """The tests' counts, and a reason when the run did not end normally."""
    if run.timed_out:
        # Named among the failures too, so the event and everything that shows it say why
        # the verdict is `failed` (pytest, killed, wrote no report naming a test).
        reason = (
            f"the tests did not finish within {wall_s:g} s; every process of the run was killed"
        )
        timed_out = TestCounts(errors=1)
        timed_out.failures.append(FailedTest(test_id="pytest", kind="error", message=reason))
        return timed_out, reason
    counts = TestCounts()
    problem = ""
    if run.report:
        try:
            counts = parse_junit(run.report)
        except ReportError as exc:
            problem = str(exc)
    elif run.exit_code not in (0, 5):
        problem = "pytest wrote no report"
    if run.exit_code == 5 and not counts.total:
        return counts, "no tests were collected"
    if problem or (run.exit_code not in (0, 1, 5) and not counts.failed and not counts.errors):
        counts.errors = max(counts.errors, 1)
        counts.failures.append(
            FailedTest(
                test_id="pytest",
                kind="error",
                message=cap(
                    f"pytest exited with code {run.exit_code}: {run.output.strip()[-1500:]}"
                ),
            )
        )
        return counts, problem or f"pytest exited with code {run.exit_code}"
    return counts, ""


def _tail(output: str) -> str:
    return output[-MAX_OUTPUT_TAIL_CHARS:]
