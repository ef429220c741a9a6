"""Only files with a line of code past the line length go through ruff, and ruff is the
version the verify runtime checks with."""

from __future__ import annotations

import re
from pathlib import Path

from services.orchestrator.providers.offline.formatting import format_overlong, overlong
from services.orchestrator.providers.offline.templates.pyformat import LINE_LENGTH

ROOT = Path(__file__).resolve().parents[4]
PYPROJECT = '[tool.ruff]\nline-length = 100\ntarget-version = "py311"\n'


def test_a_long_trailing_comment_does_not_make_a_line_overlong() -> None:
    code = "x = f(a, b)"
    line = code + "  # type: ignore[" + "x" * LINE_LENGTH + "]"

    assert not overlong(line + "\n")
    assert overlong("y = g(" + ", ".join(["argument"] * 20) + ")\n")


def test_a_short_file_is_never_looked_at_twice() -> None:
    assert not overlong("def f() -> None:\n    return None\n")


def test_only_overlong_files_change_and_they_come_back_formatted() -> None:
    long_call = "value = compute(" + ", ".join(f"argument_{i}" for i in range(12)) + ")\n"
    untouched = "x  =  1\n"  # unformatted, but short: left as the templates made it
    contents = {"app/long.py": long_call, "app/short.py": untouched, "README.md": "#  x\n"}

    result = format_overlong(contents, PYPROJECT)

    assert result["app/short.py"] == untouched and result["README.md"] == "#  x\n"
    assert result["app/long.py"].startswith("value = compute(\n")
    assert all(len(line) <= LINE_LENGTH for line in result["app/long.py"].splitlines())


def test_the_formatter_is_the_version_the_verify_runtime_pins() -> None:
    def pinned(path: str) -> str:
        found = re.search(r"^ruff==(\S+)$", (ROOT / path).read_text(), re.MULTILINE)
        assert found, f"ruff is not pinned in {path}"
        return found.group(1)

    assert pinned("constraints.txt") == pinned("services/verifier/runtime-requirements.txt")
