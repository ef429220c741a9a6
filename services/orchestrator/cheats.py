"""What a repair may not do to the tests: the data-loss guard's rules for repair rounds.

A repair round asks the model to make failing tests pass. The cheap ways to get there are
not repairs, and each is a rule with a name: deleting a test file (`test_deleted`),
emptying one (`test_emptied`), removing a test function (`test_removed`), adding a skip
or xfail marker (`test_skipped`) and turning an assertion into one that cannot fail
(`assertion_weakened`). Only test files are judged; everything else passes.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from contracts.paths import PathRejected, safe_path
from contracts.phases import PhaseOutput
from services.orchestrator.guard import Violation

CHEAT_RULES = frozenset(
    {"test_deleted", "test_emptied", "test_removed", "test_skipped", "assertion_weakened"}
)

_SKIP_WORDS = re.compile(r"\b(skip|skipif|xfail|importorskip)\b")


def is_test_file(path: str) -> bool:
    """True for a pytest file: `test_*.py`, `*_test.py` or `conftest.py`."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
    )


@dataclass
class _Shape:
    """What a test file holds that a cheat would change."""

    tests: set[str] = field(default_factory=set)
    skips: int = 0
    constant_asserts: int = 0


def _shape(content: str) -> _Shape:
    shape = _Shape()
    try:
        tree = ast.parse(content)
    except SyntaxError:
        # Judged by text: the names `def test_…` and the skip words.
        shape.tests = set(re.findall(r"^\s*(?:async\s+)?def\s+(test\w*)", content, re.MULTILINE))
        shape.skips = len(_SKIP_WORDS.findall(content))
        shape.constant_asserts = len(re.findall(r"^\s*assert\s+(True|1)\b", content, re.M))
        return shape

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.name.startswith(
                "test"
            ):
                shape.tests.add(child.name)
            if isinstance(child, ast.Assert) and _always_true(child.test):
                shape.constant_asserts += 1
            if isinstance(child, ast.Attribute | ast.Name):
                name = child.attr if isinstance(child, ast.Attribute) else child.id
                if name in ("skip", "skipif", "xfail", "importorskip"):
                    shape.skips += 1
            visit(child)

    visit(tree)
    return shape


def _always_true(test: ast.expr) -> bool:
    """An assertion that cannot fail: a truthy constant, or `… or True`."""
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return any(_always_true(v) for v in test.values)
    return False


def _normalised(path: str) -> str | None:
    """The path as the path validator normalises it, None when it rejects it (the
    path guard names that): a test file named in another Unicode form is still judged."""
    try:
        return safe_path(path)
    except PathRejected:
        return None


def check_repair(output: PhaseOutput, *, current: dict[str, str]) -> list[Violation]:
    """Every cheat in a repair's output, judged against `current` by normalised path."""
    violations: list[Violation] = []
    for deletion in output.deletions:
        path = _normalised(deletion.path)
        if path is not None and is_test_file(path) and path in current:
            violations.append(
                Violation(path, "test_deleted", "a repair may not delete a test file")
            )
    for file in output.files:
        path = _normalised(file.path)
        before = current.get(path) if path is not None else None
        if path is None or before is None or not is_test_file(path):
            continue
        if before.strip() and not file.content.strip():
            violations.append(Violation(path, "test_emptied", "a repair may not empty a test file"))
            continue
        old, new = _shape(before), _shape(file.content)
        removed = sorted(old.tests - new.tests)
        if removed:
            violations.append(
                Violation(
                    path,
                    "test_removed",
                    f"a repair may not remove tests ({', '.join(removed[:5])})",
                )
            )
        if new.skips > old.skips:
            violations.append(
                Violation(path, "test_skipped", "a repair may not add skip or xfail markers")
            )
        if new.constant_asserts > old.constant_asserts:
            violations.append(
                Violation(
                    path,
                    "assertion_weakened",
                    "a repair may not replace an assertion with one that cannot fail "
                    "(`assert True`)",
                )
            )
    return violations
