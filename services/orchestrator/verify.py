"""The verify phase: every Python file of the version must compile (never executed)."""

from __future__ import annotations


def compile_errors(files: dict[str, str]) -> list[str]:
    """`path:line: message` for every .py file that does not compile."""
    errors: list[str] = []
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        try:
            compile(files[path], path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{path}:{exc.lineno or 0}: {exc.msg}")
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    return errors
