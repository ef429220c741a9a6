"""The request rules beyond a body's shape (services/gateway/requests.py)."""

from __future__ import annotations

import pytest

from services.gateway.errors import BadRequest
from services.gateway.requests import (
    checked_file_path,
    checked_locked_paths,
    checked_project_name,
    resume_after,
)


def test_resume_after_takes_the_larger_of_header_and_query() -> None:
    assert resume_after(None, None) == 0
    assert resume_after("7", 3) == 7
    assert resume_after("2", 5) == 5
    with pytest.raises(BadRequest, match="Last-Event-ID"):
        resume_after("seven", None)


def test_locked_paths_are_normalised_unique_sorted_and_files_of_the_parent() -> None:
    parent = {"a.py", "b/c.py"}
    assert checked_locked_paths(["b/c.py", "a.py", "a.py"], parent) == ["a.py", "b/c.py"]
    with pytest.raises(BadRequest) as outside:
        checked_locked_paths(["a.py", "../x"], parent)
    assert outside.value.extra["problems"][0]["location"] == "locked_paths[1]"
    with pytest.raises(BadRequest, match="not a file of the parent"):
        checked_locked_paths(["d.py"], parent)


def test_names_and_file_paths() -> None:
    assert checked_project_name("  shop ") == "shop"
    with pytest.raises(BadRequest):
        checked_project_name("a\x00b")
    assert checked_file_path("/app/models.py") == "app/models.py"
    with pytest.raises(BadRequest):
        checked_file_path("a/../../b")
