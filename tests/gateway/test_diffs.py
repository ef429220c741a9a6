"""The diff of a version against its parent: which files the repair rounds changed."""

from __future__ import annotations

from typing import Any

from services.gateway.diffs import diff_versions, repaired_files


def completed(round_: int, outcome: str, *changed: str, deleted: tuple[str, ...] = ()) -> Any:
    body = {"round": round_, "outcome": outcome, "files_changed": list(changed)}
    return ("repair.completed", {**body, "deleted": list(deleted)})


def test_the_rounds_that_changed_a_file_and_were_kept_are_named() -> None:
    events = [
        ("file.written", {"path": "app/a.py"}),
        completed(1, "changed", "app/a.py", "app/b.py", deleted=("app/old.py",)),
        completed(2, "changed", "app/a.py"),
    ]
    assert repaired_files(events) == {"app/a.py": [1, 2], "app/b.py": [1], "app/old.py": [1]}


def test_rejected_failed_unchanged_and_reverted_rounds_name_no_file() -> None:
    events = [
        completed(1, "changed", "app/a.py"),
        completed(2, "changed", "app/b.py"),
        ("repair.reverted", {"round": 2, "files": ["app/b.py"]}),
        completed(3, "rejected"),
        completed(4, "unchanged"),
        completed(5, "failed"),
    ]
    assert repaired_files(events) == {"app/a.py": [1]}


def test_the_diff_marks_only_the_repaired_files() -> None:
    parent = {"app/a.py": b"x = 1\n", "tests/test_a.py": b"assert 1\n", "same.md": b"s\n"}
    child = {"app/a.py": b"x = 2\n", "tests/test_a.py": b"assert 1\n", "app/new.py": b"n\n"}
    child["same.md"] = b"s\n"
    summary, files = diff_versions(parent, child, repaired={"app/a.py": [1]})
    assert {f.path: f.repair_rounds for f in files} == {"app/a.py": [1], "app/new.py": []}
    assert (summary.added, summary.modified, summary.unchanged) == (1, 1, 2)
