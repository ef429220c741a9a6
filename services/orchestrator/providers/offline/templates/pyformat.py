"""Python source laid out the way `ruff format` (and isort through `ruff check`) would.

A generated project checks itself with `ruff check` and `ruff format --check` (its
pyproject.toml carries the configuration), so the templates write code that is already
formatted. The layout depends on the length of names from the schema, so the few
constructs whose line breaks vary are built here rather than spelled out in the
templates:

- `bracket`: a call, a signature, a subscript or a literal — on one line when it fits,
  else its contents on one indented line, else one item per line with a trailing comma
  (the magic trailing comma then keeps it that way);
- `import_lines` and `Imports.render` (in common.py): isort's order — sections, straight
  imports before `from` imports, constants, classes and then other names, natural order.
"""

from __future__ import annotations

import re

LINE_LENGTH = 100
"""The generated project's `line-length` (in its pyproject.toml)."""

INDENT = "    "

_DIGITS = re.compile(r"(\d+)")


def natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders `entity2` before `entity10`, ignoring case (as isort does)."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part)
        for part in _DIGITS.split(text.lower())
        if part
    )


def member_key(name: str) -> tuple[int, tuple[tuple[int, int | str], ...], str]:
    """isort's order of imported names: CONSTANTS, then Classes, then everything else."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, natural(name), name


def fits(line: str) -> bool:
    """True when `line` (with its indentation) is within the line length."""
    return len(line) <= LINE_LENGTH


def bracket(
    indent: str,
    head: str,
    items: list[str],
    tail: str = "",
    brackets: str = "()",
    explode: bool = False,
) -> list[str]:
    """`head(items)tail` as ruff format lays it out, as lines (each with its indentation).

    One line when it fits; else `head(` / the items on one indented line / `)tail` when
    that line fits; else one item per line, each with a trailing comma. `explode` forces
    the last form (for a literal that should read as a list even when short).
    """
    opening, closing = brackets[0], brackets[1]
    joined = ", ".join(items)
    flat = f"{indent}{head}{opening}{joined}{closing}{tail}"
    if not explode and fits(flat):
        return [flat]
    inner = indent + INDENT
    if not explode and items and fits(inner + joined):
        return [f"{indent}{head}{opening}", inner + joined, f"{indent}{closing}{tail}"]
    return [
        f"{indent}{head}{opening}",
        *(f"{inner}{item}," for item in items),
        f"{indent}{closing}{tail}",
    ]


def import_from(module: str, names: list[str]) -> list[str]:
    """`from module import a, b` on one line, or parenthesised one name per line (isort).

    A name may be `name as alias`; names are ordered by the imported name.
    """
    ordered = sorted(names, key=lambda n: member_key(n.split(" as ")[0]))
    flat = f"from {module} import {', '.join(ordered)}"
    return [flat] if fits(flat) else bracket("", f"from {module} import ", ordered, explode=True)
