"""Small helpers every template uses: imports that never clash with a generated name,
Python and Markdown literals, and the per-type details of a field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.orchestrator.guard import find_elision
from services.orchestrator.providers.offline.layout import Column
from services.orchestrator.providers.offline.templates.pyformat import import_from, natural
from services.orchestrator.providers.offline.text import markdown_text


@dataclass
class Imports:
    """The imports of one generated module, each under a name that clashes with nothing.

    `taken` holds the names the module defines itself and the field names used in its
    class bodies (a field named `str` or `Mapped` would shadow the import inside the
    class). An import whose name is taken is bound under `_<name>` instead, which no
    entity or field name can be (those never start with an underscore).
    """

    taken: set[str]
    _plain: set[str] = field(default_factory=set)
    _from: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def module(self, module: str, alias: str | None = None) -> str:
        """Import `module` (optionally `as alias`); the name to use it by."""
        local = alias or module
        if local in self.taken:
            local = f"_{local}"
        self._plain.add(f"import {module}" if local == module else f"import {module} as {local}")
        return local

    def name(self, module: str, name: str) -> str:
        """Import `name` from `module`; the name to use it by."""
        local = f"_{name}" if name in self.taken else name
        self._from.setdefault(module, set()).add((name, local))
        return local

    def builtin(self, name: str) -> str:
        """A builtin such as `str`, qualified through `builtins` when a field shadows it."""
        if name not in self.taken:
            return name
        return f"{self.module('builtins', '_builtins')}.{name}"

    def alias(self, module: str, name: str, local: str) -> str:
        """Import `name` from `module` as `local` (a name the caller chose); `local`."""
        self._from.setdefault(module, set()).add((name, local))
        return local

    def render(self, first_party: tuple[str, ...] = ("app", "tests")) -> str:
        """The import block: standard library, third party, the project's own (isort order)."""
        groups: dict[int, tuple[list[str], list[str]]] = {0: ([], []), 1: ([], []), 2: ([], [])}
        for line in self._plain:
            groups[_section(line.split()[1], first_party)][0].append(line)
        for module in self._from:
            groups[_section(module, first_party)][1].append(module)
        blocks = []
        for plain, froms in groups.values():
            lines = sorted(plain, key=lambda line: natural(line.split()[1]))
            for module in sorted(froms, key=natural):
                names = self._from[module]
                parts = [n if n == local else f"{n} as {local}" for n, local in sorted(names)]
                lines.extend(import_from(module, parts))
            blocks.append("\n".join(lines))
        return "\n\n".join(block for block in blocks if block)


STDLIB = frozenset(
    {"builtins", "collections", "datetime", "decimal", "os", "typing", "uuid", "asyncio"}
)


def _section(module: str, first_party: tuple[str, ...]) -> int:
    top = module.split(".")[0]
    if top in STDLIB:
        return 0
    return 2 if top in first_party else 1


def py(value: object) -> str:
    """A Python literal for a JSON-like value (str, int, float, bool, None, list, dict).

    Strings are double-quoted, as a formatter would write them.
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(py(v) for v in value) + "]"
    return repr(value)


def markdown(text: str) -> str:
    """User text made inert for a Markdown table cell, heading or paragraph.

    One line, HTML and Markdown escaped (`text.markdown_text`); text that reads like an
    elision placeholder (which the data-loss guard would reject) is left out.
    """
    flat = markdown_text(text)
    return "" if find_elision(flat, None) else flat


SQL_TYPES: dict[str, str] = {
    "string": "String(255)",
    "text": "Text()",
    "integer": "Integer()",
    "float": "Float()",
    "decimal": "DecimalString()",
    "boolean": "Boolean()",
    "date": "Date()",
    "datetime": "DateTime()",
    "uuid": "Uuid()",
    "enum": "String(64)",
}

TYPE_TITLES: dict[str, str] = {
    "string": "string (at most 255 characters)",
    "text": "text",
    "integer": "integer",
    "float": "number",
    "decimal": 'decimal (sent and returned as a string, e.g. "12.50")',
    "boolean": "boolean",
    "date": "date (`YYYY-MM-DD`)",
    "datetime": "date and time (ISO 8601)",
    "uuid": "UUID",
    "enum": "one of",
}


# A column type's Python type: a builtin, or a module's name, the module imported under an alias
# (a field named like the module does not shadow it). Enums are plain strings in the models.
PYTHON_TYPES: dict[str, str | tuple[str, str, str]] = {
    "string": "str",
    "text": "str",
    "integer": "int",
    "float": "float",
    "decimal": ("decimal", "_decimal", "Decimal"),
    "boolean": "bool",
    "date": ("datetime", "_dt", "date"),
    "datetime": ("datetime", "_dt", "datetime"),
    "uuid": ("uuid", "_uuid", "UUID"),
    "enum": "str",
}


def python_type(column: Column, imports: Imports) -> str:
    """The Python type of a column's values (`PYTHON_TYPES`)."""
    kind = PYTHON_TYPES[column.type]
    if isinstance(kind, str):
        return imports.builtin(kind)
    module, alias, name = kind
    return f"{imports.module(module, alias)}.{name}"


def sql_type(column: Column, imports: Imports, *, zoned: bool = True) -> str:
    """The SQLAlchemy column type expression of a column. A `zoned` project stores a
    datetime as ISO 8601 text, with the UTC offset it was sent with (`app.db`)."""
    expression = SQL_TYPES[column.type]
    if zoned and column.type == "datetime":
        expression = "DateTimeString()"
    name = expression.split("(")[0]
    module = "app.db" if name in ("DecimalString", "DateTimeString") else "sqlalchemy"
    return imports.name(module, name) + expression[len(name) :]
