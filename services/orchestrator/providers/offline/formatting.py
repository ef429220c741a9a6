"""The few files the templates cannot lay out alone go through `ruff format`.

The templates write formatted code (pyformat.py) for names of ordinary length: across the
matrix of schemas and iterations no line of code is longer than the project's line length.
Names near the 64-character limit make lines whose breaks follow ruff's full rules (a
subscript in an annotation, a call inside a dict inside a call, a comparison split in
parentheses); rather than re-implement them, a file with a line of code longer than the
line length (trailing comments do not count, as for ruff) is formatted by ruff itself,
the version the verify runtime pins (a test keeps the two equal), with the project's own
pyproject.toml. Every other file is written as the templates made it, without a process.

When ruff cannot run, the files stay as they are and a warning says why: the version is
still correct, and its verification reports the formatting findings.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
import tokenize
from pathlib import Path

from services.common.logs import get_logger
from services.orchestrator.providers.offline.templates.pyformat import LINE_LENGTH

log = get_logger(__name__)

RUFF_TIMEOUT_S = 60.0


def overlong(source: str) -> bool:
    """True when a line of code in `source` (its trailing comment left out) is longer than
    the generated project's line length."""
    if not any(len(line) > LINE_LENGTH for line in source.splitlines()):
        return False
    comments: dict[int, int] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.start[1]
    except (tokenize.TokenError, SyntaxError):
        return True  # ruff will say what is wrong with it
    for number, line in enumerate(source.splitlines(), start=1):
        code = line[: comments[number]].rstrip() if number in comments else line
        if len(code) > LINE_LENGTH:
            return True
    return False


def format_overlong(contents: dict[str, str], pyproject: str) -> dict[str, str]:
    """`contents` (path → text) with each Python file that has an overlong line formatted
    by ruff under the project's `pyproject` (its text); the rest unchanged."""
    picked = sorted(p for p, text in contents.items() if p.endswith(".py") and overlong(text))
    if not picked:
        return contents
    formatted = _ruff_format({path: contents[path] for path in picked}, pyproject)
    return contents | formatted


def _ruff_format(files: dict[str, str], pyproject: str) -> dict[str, str]:
    try:
        from ruff.__main__ import find_ruff_bin

        ruff = find_ruff_bin()
    except (ImportError, FileNotFoundError) as exc:
        log.warning(
            "ruff is not installed; {count} files keep their long lines: {error}",
            count=len(files),
            error=str(exc),
        )
        return {}
    with tempfile.TemporaryDirectory(prefix="kiln-format-") as folder:
        root = Path(folder)
        (root / "pyproject.toml").write_text(pyproject)
        for path, text in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        try:
            done = subprocess.run(
                [ruff, "format", "--no-cache", "--quiet", "--", *files],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=RUFF_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning(
                "ruff format could not run; {count} files keep their long lines: {error}",
                count=len(files),
                error=str(exc),
            )
            return {}
        if done.returncode != 0:
            log.warning(
                "ruff format failed; {count} files keep their long lines: {error}",
                count=len(files),
                error=done.stderr.strip()[-500:],
            )
            return {}
        return {path: (root / path).read_text() for path in files}
