"""The repository's own checks look at Kiln's code only, wherever a user unpacks a project;
Kiln's modules stay small, or say why not."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


def test_ruff_lints_kiln_folders_not_a_project_unzipped_into_the_root(tmp_path: Path) -> None:
    # The README's walkthrough unzips `shop/` into the repository root.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "app.py").write_text("import os,sys\nx=1;y = 2\n")
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "bad.py").write_text("import os\n")

    listed = subprocess.run(
        [str(RUFF), "check", "--show-files", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "services/bad.py" in listed
    assert "shop" not in listed
    formatted = subprocess.run(
        [str(RUFF), "format", "--check", "."], cwd=tmp_path, capture_output=True, text=True
    )
    assert "shop" not in formatted.stdout + formatted.stderr


LONG_MODULE_LINES = 450


def test_every_module_over_450_lines_says_why_it_stays_one() -> None:
    long_modules = [
        path
        for folder in ("services", "contracts")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if len(path.read_text().splitlines()) > LONG_MODULE_LINES
    ]
    assert long_modules, "the check looks at real modules"
    silent = [
        str(path.relative_to(ROOT))
        for path in long_modules
        if "stays one module" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert not silent, f"over {LONG_MODULE_LINES} lines without a sentence saying why: {silent}"
