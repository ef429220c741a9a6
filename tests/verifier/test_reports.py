"""JUnit XML, ruff and compile reports are read defensively."""

from __future__ import annotations

import json

import pytest

from contracts.verification import MAX_FAILURE_MESSAGE_CHARS
from services.verifier.reports import (
    ReportError,
    parse_compile,
    parse_junit,
    parse_ruff_check,
    parse_ruff_format,
)

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.test_items" name="test_ok" time="0.1"/>
<testcase classname="tests.api.test_x.TestThing" name="test_ok2" time="0.1"/>
<testcase classname="tests.test_items" name="test_bad" time="0.1">
  <failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2</failure></testcase>
<testcase classname="tests.test_items" name="test_err" time="0.1"><error message="fixture failed">boom</error></testcase>
<testcase classname="tests.test_items" name="test_skip" time="0.1"><skipped message="later"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_and_failures() -> None:
    counts = parse_junit(JUNIT)

    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (2, 1, 1, 1)
    assert [f.test_id for f in counts.failures] == [
        "tests/test_items.py::test_bad",
        "tests/test_items.py::test_err",
    ]
    assert "assert 1 == 2" in counts.failures[0].message
    assert counts.failures[1].message == "fixture failed\nboom"


def test_a_class_is_part_of_the_node_id() -> None:
    counts = parse_junit(
        JUNIT.replace(b'test_ok2" time="0.1"/>', b'test_ok2"><failure/></testcase>')
    )

    assert counts.failures[0].test_id == "tests/api/test_x.py::TestThing::test_ok2"


def test_messages_are_capped() -> None:
    data = JUNIT.replace(b"boom", b"x" * 100_000)

    [_, error] = parse_junit(data).failures
    assert len(error.message) <= MAX_FAILURE_MESSAGE_CHARS


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY lol "lol">]><testsuites>&lol;</testsuites>',
        b"<testsuites><testcase",
    ],
    ids=["entities", "truncated"],
)
def test_hostile_or_broken_xml_is_refused(data: bytes) -> None:
    with pytest.raises(ReportError):
        parse_junit(data)


def test_ruff_findings() -> None:
    items = [
        {
            "code": "F401",
            "message": "`os` imported but unused",
            "filename": "/sandbox/source/app/main.py",
            "location": {"row": 3, "column": 8},
        }
    ] * 30
    report = parse_ruff_check(json.dumps(items).encode())

    assert report.findings == 30
    assert len(report.details) == 20
    assert report.details[0] == "app/main.py:3: F401 `os` imported but unused"
    assert parse_ruff_check(b"[]").findings == 0
    with pytest.raises(ReportError):
        parse_ruff_check(b"{not json")


def test_ruff_format_and_compile() -> None:
    output = "Would reformat: app/a.py\nWould reformat: app/b.py\n2 files would be reformatted\n"
    assert parse_ruff_format(output) == 2
    assert parse_ruff_format("3 files already formatted\n") == 0
    newer = "unformatted: File would be reformatted\n --> t.py:2:1\n1 file would be reformatted\n"
    assert parse_ruff_format(newer) == 1
    assert parse_compile('["app/a.py:1: invalid syntax"]') == ["app/a.py:1: invalid syntax"]
    with pytest.raises(ReportError):
        parse_compile("Traceback")
