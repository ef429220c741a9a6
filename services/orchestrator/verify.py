"""The verify phase: every Python file of the version must compile (never executed)."""

from __future__ import annotations

from functools import lru_cache


def compile_errors(files: dict[str, str]) -> list[str]:
    """`path:line: message` for every .py file that does not compile."""
    errors: list[str] = []
    for path in sorted(files):
        if path.endswith(".py"):
            error = _compile_error(path, files[path])
            if error is not None:
                errors.append(error)
    return errors


# An iteration carries most of its parent's files unchanged: each is compiled once.
@lru_cache(maxsize=2048)
def _compile_error(path: str, content: str) -> str | None:
    try:
        compile(content, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno or 0}: {exc.msg}"
    except ValueError as exc:
        return f"{path}: {exc}"
    return None
