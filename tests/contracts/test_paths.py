"""The one path validator: nothing it accepts can leave the directory it is joined to."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.paths import PathRejected, safe_path

ATTACKS = [
    "../../etc/passwd",
    "/etc/x",
    "C:\\x",
    "C:/x",
    "a/../../b",
    "a\x00b",
    "a\\b",
    "",
    "a//b",
    "./a",
    "a/./b",
    "a/",
    ".env",
    ".git/config",
    "src/.ssh/id_rsa",
    "\\\\server\\share\\x",
    "con.txt",
    "a/nul",
    "x" * 300,
    "/".join(["d"] * 20) + "/f",
    "a\u202eb.py",
    "a\nb",
    "a:b",
]


@pytest.mark.parametrize("path", ATTACKS)
def test_attacks_are_rejected_with_a_reason(path: str) -> None:
    with pytest.raises(PathRejected) as info:
        safe_path(path)
    assert info.value.reason


@pytest.mark.parametrize(
    "path",
    [
        "app/main.py",
        "README.md",
        ".gitignore",
        ".github/workflows/ci.yml",
        "tests/test_a.py",
        "ünï/cödé.py",
    ],
)
def test_ordinary_project_paths_are_accepted(path: str) -> None:
    assert safe_path(path)


def test_unicode_is_normalised() -> None:
    assert safe_path("cafe\u0301.py") == "caf\u00e9.py"


segment = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=12)
paths = st.lists(
    st.one_of(segment, st.sampled_from(["..", ".", "", "/", "\\", "C:"])), min_size=1, max_size=6
).map("/".join)


@settings(max_examples=400)
@given(paths)
def test_no_accepted_path_escapes_its_root(path: str) -> None:
    root = Path("/tmp/kiln-root")
    try:
        accepted = safe_path(path)
    except PathRejected:
        return
    joined = (root / accepted).resolve()
    assert joined.is_relative_to(root.resolve())
    assert os.path.commonpath([root, joined]) == str(root)


@settings(max_examples=100, deadline=None)
@given(st.lists(paths, min_size=1, max_size=5))
def test_a_zip_of_accepted_paths_extracts_inside_its_directory(
    tmp_path_factory: pytest.TempPathFactory, candidates: list[str]
) -> None:
    accepted = set()
    for path in candidates:
        try:
            accepted.add(safe_path(path))
        except PathRejected:
            pass
    # A path and a folder of the same name cannot both exist on disk.
    accepted = {p for p in accepted if not any(q.startswith(p + "/") for q in accepted)}
    if not accepted:
        return
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in accepted:
            archive.writestr(path, "x")
    target = tmp_path_factory.mktemp("extract")
    with zipfile.ZipFile(buffer) as archive:
        archive.extractall(target)
    for file in target.rglob("*"):
        assert file.resolve().is_relative_to(target.resolve())
