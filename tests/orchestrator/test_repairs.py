"""The repair loop's decisions, from the fold alone (so a resumed generation continues at
the unfinished step and never repeats a finished one)."""

from __future__ import annotations

from contracts.events import FailedTest
from contracts.state import RepairRound, Verification
from services.orchestrator.repairs import (
    Done,
    Repair,
    Revert,
    Verify,
    files_named,
    next_step,
)


def failed(round_: int = 0, n: int = 1, repairs: list[RepairRound] | None = None) -> Verification:
    return Verification(status="failed", round=round_, failed=n, repairs=repairs or [])


def test_round_0_is_verified_first_and_resumed_when_started() -> None:
    assert next_step(None, rounds=2, repairable=True) == Verify(0, started=False)
    running = Verification(status="running")
    assert next_step(running, rounds=2, repairable=True) == Verify(0, started=True)


def test_a_failed_llm_version_is_repaired_up_to_the_rounds() -> None:
    assert next_step(failed(), rounds=2, repairable=True) == Repair(1, started=False)
    assert next_step(failed(), rounds=0, repairable=True) == Done()
    assert next_step(failed(), rounds=2, repairable=False) == Done()
    two = [RepairRound(round=1, status="changed", failing_count=1),
           RepairRound(round=2, status="changed", failing_count=1)]  # fmt: skip
    assert next_step(failed(2, repairs=two), rounds=2, repairable=True) == Done()
    assert next_step(failed(2, repairs=two), rounds=3, repairable=True) == Repair(3, False)


def test_passing_unverified_and_no_tests_are_not_repaired() -> None:
    for status in ("passed", "no_tests", "unverified"):
        v = Verification(status=status)  # type: ignore[arg-type]
        assert next_step(v, rounds=2, repairable=True) == Done()


def test_an_unfinished_round_is_resumed_never_repeated() -> None:
    running = [RepairRound(round=1, status="running", failing_count=1)]
    assert next_step(failed(repairs=running), rounds=2, repairable=True) == Repair(1, True)
    changed = [RepairRound(round=1, status="changed", failing_count=1)]
    assert next_step(failed(repairs=changed), rounds=2, repairable=True) == Verify(1, False)
    v = Verification(status="running", round=1, repairs=changed)
    assert next_step(v, rounds=2, repairable=True) == Verify(1, True)


def test_a_round_that_makes_things_worse_is_reverted_then_the_loop_stops() -> None:
    changed = [RepairRound(round=1, status="changed", failing_count=1)]
    assert next_step(failed(1, 3, changed), rounds=2, repairable=True) == Revert(1)
    assert next_step(failed(1, 1, changed), rounds=2, repairable=True) == Repair(2, False)
    reverted = [RepairRound(round=1, status="reverted", failing_count=1)]
    assert next_step(failed(0, 1, reverted), rounds=2, repairable=True) == Done()


def test_a_rejected_failed_or_empty_round_ends_the_loop() -> None:
    for status in ("rejected", "failed", "unchanged"):
        ended = [RepairRound(round=1, status=status, failing_count=1)]  # type: ignore[arg-type]
        assert next_step(failed(0, 1, ended), rounds=2, repairable=True) == Done()


def test_the_files_a_failure_points_at_are_found() -> None:
    v = Verification(
        status="failed",
        failures=[
            FailedTest(
                test_id="tests/test_status.py::test_created",
                message='File "/tmp/work/app/status.py", line 5, in created\nNameError',
            ),
            FailedTest(test_id="tests.test_other.TestX::test_y", message=""),
        ],
    )
    files = {"tests/test_status.py": "", "app/status.py": "", "tests/test_other.py": "", "x.py": ""}
    assert files_named(v, files) == ["tests/test_status.py", "tests/test_other.py", "app/status.py"]
