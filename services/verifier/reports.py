"""Reading what the checks report: pytest's JUnit XML, ruff's JSON, the compile check's JSON.

Everything here comes from a run of untrusted code, so it is parsed defensively: XML with
a DOCTYPE or an entity is refused (the standard library's parser would expand internal
entities), sizes are capped, and anything unreadable is an empty report with a reason,
never an exception that fails the verifier.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from contracts.events import FailedTest
from contracts.verification import (
    MAX_FAILURE_MESSAGE_CHARS,
    MAX_FAILURES,
    MAX_LINT_DETAILS,
)


class ReportError(ValueError):
    """A report that cannot be read; the message says why."""


@dataclass(slots=True)
class TestCounts:
    """What a JUnit report says."""

    __test__ = False  # not a pytest test class

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[FailedTest] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Every test case the report holds."""
        return self.passed + self.failed + self.errors + self.skipped


def cap(text: str, limit: int = MAX_FAILURE_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 12] + " […cut]"


def parse_junit(data: bytes) -> TestCounts:
    """Counts and the first failures of a JUnit XML report (pytest's `--junitxml`)."""
    head = data[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data.upper():
        raise ReportError("the test report declares a DOCTYPE or an entity; it was not read")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ReportError(f"the test report is not valid XML: {exc}") from None
    counts = TestCounts()
    for case in root.iter("testcase"):
        outcome = _outcome(case)
        if outcome is None:
            counts.passed += 1
            continue
        kind, element = outcome
        if kind == "skipped":
            counts.skipped += 1
            continue
        if kind == "failure":
            counts.failed += 1
        else:
            counts.errors += 1
        if len(counts.failures) < MAX_FAILURES:
            counts.failures.append(
                FailedTest(
                    test_id=test_id(case),
                    message=cap(_message(element)),
                    kind="failure" if kind == "failure" else "error",
                )
            )
    return counts


def _outcome(case: ET.Element) -> tuple[str, ET.Element] | None:
    # An error in a teardown comes after the failure, so the failure counts.
    for kind in ("failure", "error", "skipped"):
        element = case.find(kind)
        if element is not None:
            return kind, element
    return None


def _message(element: ET.Element) -> str:
    message = (element.get("message") or "").strip()
    text = (element.text or "").strip()
    if message and text and message not in text:
        return f"{message}\n{text}"
    return text or message


def test_id(case: ET.Element) -> str:
    """A pytest node id (`tests/test_x.py::TestY::test_z`) from a JUnit test case.

    pytest writes `classname` as the node id's path and classes joined by dots, without
    `.py`: the module is the dotted prefix up to the first part that names a class.
    """
    name = case.get("name") or "?"
    classname = case.get("classname") or ""
    if not classname:
        return name
    parts = classname.split(".")
    cut = next((i for i, p in enumerate(parts) if i and p[:1].isupper()), len(parts))
    module = "/".join(parts[:cut]) + ".py"
    return "::".join([module, *parts[cut:], name])


test_id.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LintReport:
    """ruff's findings: how many, and the first few as `path:line: CODE message`."""

    findings: int
    details: list[str]


def parse_ruff_check(data: bytes) -> LintReport:
    """ruff check's `--output-format json` (a list of diagnostics)."""
    try:
        items = json.loads(data or b"[]")
    except ValueError as exc:
        raise ReportError(f"ruff's report is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ReportError("ruff's report is not a list")
    details = []
    for item in items[:MAX_LINT_DETAILS]:
        if not isinstance(item, dict):
            continue
        location = item.get("location") or {}
        row = location.get("row", 0) if isinstance(location, dict) else 0
        path = str(item.get("filename") or "?")
        details.append(
            cap(
                f"{_relative(path)}:{row}: {item.get('code') or ''} {item.get('message') or ''}",
                300,
            )
        )
    return LintReport(findings=len(items), details=details)


def _relative(path: str) -> str:
    for root in ("/sandbox/source/", "/sandbox/project/"):
        if path.startswith(root):
            return path[len(root) :]
    return path.rsplit("/project/", 1)[-1] if path.startswith("/") else path


def parse_ruff_format(output: str) -> int:
    """How many files `ruff format --check` would reformat (its summary line, or else the
    files it names, in the older and newer output styles)."""
    summary = re.search(r"^(\d+) files? would be reformatted", output, re.MULTILINE)
    if summary:
        return int(summary.group(1))
    return sum(
        1
        for line in output.splitlines()
        if line.startswith(("Would reformat", "unformatted: File would be reformatted"))
    )


def parse_compile(data: str) -> list[str]:
    """The compile check's JSON list of `path:line: message`."""
    try:
        items = json.loads(data or "[]")
    except ValueError as exc:
        raise ReportError(f"the compile check's report is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ReportError("the compile check's report is not a list")
    return [cap(str(item), 500) for item in items]
