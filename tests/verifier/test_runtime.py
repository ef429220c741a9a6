"""The verify runtime: what it holds, and the projects it cannot verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.verifier.runtime import (
    RuntimeUnavailable,
    declared_dependencies,
    load_runtime,
    requirement_name,
)


def test_the_runtime_holds_the_offline_stack() -> None:
    runtime = load_runtime()

    for name in ("litestar", "SQLAlchemy", "aiosqlite", "msgspec", "pytest", "pytest_asyncio",
                 "httpx", "ruff", "uvicorn"):  # fmt: skip
        assert name in runtime, name
    assert (runtime.base_prefix / "lib").is_dir()
    assert runtime.python.exists()


def test_pinned_versions_are_installed() -> None:
    runtime = load_runtime()
    pins = Path(__file__).resolve().parents[2] / "services/verifier/runtime-requirements.txt"
    for line in pins.read_text().splitlines():
        if line and not line.startswith("#"):
            assert line.split("==")[0] in runtime, line


def test_a_missing_runtime_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailable, match="kiln"):
        load_runtime(tmp_path)


def test_declared_dependencies() -> None:
    files = {
        "pyproject.toml": """
[project]
name = "shop"
dependencies = ["litestar>=2.25", "sqlalchemy[asyncio]>=2.0", "Django ; python_version > '3'"]
[project.optional-dependencies]
dev = ["pytest>=8"]
docs = ["sphinx"]
""",
        "requirements.txt": "# pins\nrequests==2.0  # http\n-r other.txt\nhttps://x/y.whl\nshop\n",
        "sub/requirements.txt": "numpy\n",
    }

    assert declared_dependencies(files) == [
        "litestar",
        "sqlalchemy",
        "Django",
        "pytest",
        "requests",
    ]
    assert load_runtime().missing(files) == ["Django", "requests"]


def test_requirement_names() -> None:
    assert requirement_name("pydantic-settings>=2") == "pydantic-settings"
    assert requirement_name("zope.interface") == "zope.interface"
    assert requirement_name("pytest; extra == 'dev'") is None
    assert declared_dependencies({"pyproject.toml": "not [toml"}) == []
