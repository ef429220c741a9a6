"""The guard's rules for repair rounds: what a repair may not do to the tests."""

from __future__ import annotations

import pytest

from contracts.phases import Deletion, GeneratedFile, PhaseOutput
from services.orchestrator.cheats import check_repair, is_test_file

TESTS = (
    "import pytest\n\nfrom app.status import created\n\n\n"
    "def test_created() -> None:\n    assert created() == 201\n\n\n"
    "class TestMore:\n    def test_ok(self) -> None:\n        assert created() > 0\n"
)
CURRENT = {"tests/test_status.py": TESTS, "app/status.py": "def created():\n    return 200\n"}


def rules(files: dict[str, str], deletions: tuple[str, ...] = ()) -> list[str]:
    output = PhaseOutput(
        files=[GeneratedFile(path=p, content=c) for p, c in files.items()],
        deletions=[Deletion(path=p, reason="flaky") for p in deletions],
    )
    return [v.rule for v in check_repair(output, current=CURRENT)]


def test_fixing_the_code_is_no_cheat() -> None:
    assert rules({"app/status.py": "def created():\n    return 201\n"}) == []


def test_a_fixed_test_that_keeps_its_tests_and_assertions_is_no_cheat() -> None:
    fixed = TESTS.replace("from app.status", "from app.status  ")
    assert (
        rules({"tests/test_status.py": fixed + "\n\ndef test_new() -> None:\n    assert 1 == 1\n"})
        == []
    )


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        ("", "test_emptied"),
        (TESTS.replace("def test_created", "def helper_created"), "test_removed"),
        (TESTS.replace("    def test_ok", "    def ok"), "test_removed"),
        (TESTS.replace("def test_created", "@pytest.mark.skip\ndef test_created"), "test_skipped"),
        (TESTS.replace("def test_created", "@pytest.mark.xfail\ndef test_created"), "test_skipped"),
        (TESTS.replace("    assert created() == 201", "    pytest.skip('later')"), "test_skipped"),
        (TESTS.replace("assert created() == 201", "assert True"), "assertion_weakened"),
        (TESTS.replace("assert created() == 201", "assert created() == 201 or True"),
         "assertion_weakened"),
        (TESTS.replace("def test_created() -> None:", "def created_() -> None\n"),
         "test_removed"),  # no longer parses: judged by its text
    ],
    ids=["emptied", "removed", "method-removed", "skip", "xfail", "skip-call", "assert-true",
         "or-true", "unparsable"],
)  # fmt: skip
def test_each_cheat_is_named(content: str, rule: str) -> None:
    assert rule in rules({"tests/test_status.py": content})


def test_deleting_a_test_file_is_a_cheat() -> None:
    assert rules({}, deletions=("tests/test_status.py",)) == ["test_deleted"]
    assert rules({}, deletions=("app/status.py",)) == []


def test_only_test_files_are_judged() -> None:
    assert is_test_file("tests/test_api.py") and is_test_file("app/api_test.py")
    assert is_test_file("tests/conftest.py")
    assert not is_test_file("app/testing.py") and not is_test_file("tests/test_data.json")
    assert rules({"app/status.py": "assert True\n"}) == []


def test_a_test_file_named_in_another_unicode_form_is_still_judged() -> None:
    # The path validator normalises to NFC, so `tests/test_cafe\u0301.py` writes the
    # existing `tests/test_café.py`: its cheats must be judged against that file.
    current = {"tests/test_caf\u00e9.py": TESTS}
    weakened = TESTS.replace("assert created() == 201", "assert True")
    output = PhaseOutput(files=[GeneratedFile(path="tests/test_cafe\u0301.py", content=weakened)])
    [violation] = check_repair(output, current=current)
    assert violation.rule == "assertion_weakened" and violation.path == "tests/test_caf\u00e9.py"
    emptied = PhaseOutput(files=[GeneratedFile(path="tests/test_cafe\u0301.py", content="")])
    assert [v.rule for v in check_repair(emptied, current=current)] == ["test_emptied"]
    deleted = PhaseOutput(deletions=[Deletion(path="tests/test_cafe\u0301.py", reason="x")])
    assert [v.rule for v in check_repair(deleted, current=current)] == ["test_deleted"]


def test_a_path_the_validator_rejects_is_left_to_the_path_guard() -> None:
    output = PhaseOutput(
        files=[GeneratedFile(path="../tests/test_status.py", content="")],
        deletions=[Deletion(path="/tests/test_status.py", reason="x")],
    )
    assert check_repair(output, current=CURRENT) == []
