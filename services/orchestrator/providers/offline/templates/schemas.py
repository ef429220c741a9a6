"""The schemas phase: msgspec request and response bodies for every entity."""

from __future__ import annotations

from services.orchestrator.providers.offline.layout import (
    Column,
    EntityLayout,
    ProjectLayout,
    pascal,
)
from services.orchestrator.providers.offline.templates.common import Imports, py, python_type

# The name of the bounded integer type of every schema module: no entity, field or
# import can be called so (those never start with an underscore).
INT64 = "_Int64"


def schemas_package(project: ProjectLayout) -> str:
    """`app/schemas/__init__.py`."""
    return (
        '"""Request and response bodies: one module per entity, with `<Entity>Create`, '
        '`<Entity>Update`,\n`<Entity>Read` and `to_read`."""\n'
    )


def schema_module(project: ProjectLayout, entity: EntityLayout) -> str:
    """`app/schemas/<entity>.py`: the Create, Update and Read structs and `to_read`."""
    create, update, read = (f"{entity.name}{suffix}" for suffix in ("Create", "Update", "Read"))
    taken = {create, update, read, "to_read", *entity.members}
    aliases: dict[str, str] = {}
    for column in entity.columns:
        if column.type == "enum":
            alias = f"{entity.name}{pascal(column.name)}"
            counter = 2
            while alias in taken:
                alias = f"{entity.name}{pascal(column.name)}{counter}"
                counter += 1
            taken.add(alias)
            aliases[column.name] = alias
    imports = Imports(taken)
    struct = imports.name("msgspec", "Struct")
    integer = imports.builtin("int")
    listing = imports.builtin("list")
    uses_int64 = project.bounded and (
        any(c.type == "integer" for c in entity.columns) or bool(entity.refs or entity.many)
    )
    bounded_int = INT64 if uses_int64 else integer
    if uses_int64:
        imports.name("typing", "Annotated")
        imports.name("msgspec", "Meta")

    def value_type(column: Column) -> str:
        if column.type == "enum":
            return aliases[column.name]
        if column.type == "integer":
            return bounded_int
        kind = python_type(column, imports)
        if column.type == "string":
            annotated = imports.name("typing", "Annotated")
            meta = imports.name("msgspec", "Meta")
            return f"{annotated}[{kind}, {meta}(max_length=255)]"
        return kind

    create_lines: list[str] = []
    update_lines: list[str] = []
    read_lines = [f"    id: {integer}"]

    def unset_names() -> tuple[str, str]:
        return imports.name("msgspec", "UnsetType"), imports.name("msgspec", "UNSET")

    def field(name: str, kind: str, plain: str, required: bool) -> None:
        """A field in the three bodies: `kind` as sent, `plain` as read back."""
        unset_type, unset = unset_names()
        optional = "" if required else " | None"
        create_lines.append(
            f"    {name}: {kind}" if required else f"    {name}: {kind} | None = None"
        )
        update_lines.append(f"    {name}: {kind}{optional} | {unset_type} = {unset}")
        read_lines.append(f"    {name}: {plain}{optional}")

    for column in entity.columns:
        kind = value_type(column)
        plain = aliases.get(column.name) or python_type(column, imports)
        field(column.name, kind, plain, column.required)
    for ref in entity.refs:
        field(ref.column, bounded_int, integer, ref.required)
    for many in entity.many:
        unset_type, unset = unset_names()
        create_lines.append(f"    {many.name}: {listing}[{bounded_int}] = []")
        update_lines.append(f"    {many.name}: {listing}[{bounded_int}] | {unset_type} = {unset}")
        read_lines.append(f"    {many.name}: {listing}[{integer}]")

    any_type = imports.name("typing", "Any")
    literal = imports.name("typing", "Literal") if aliases else ""
    header = [
        f'"""The request and response bodies of the {entity.name} API."""',
        "",
        "from __future__ import annotations",
        "",
        imports.render(),
    ]
    alias_lines = [
        f"{aliases[c.name]} = {literal}[{', '.join(py(v) for v in c.values)}]"
        for c in entity.columns
        if c.name in aliases
    ]
    to_read_args = ["        id=item.id,"]
    to_read_args.extend(f"        {c.name}=item.{c.name}," for c in entity.columns)
    to_read_args.extend(f"        {r.column}=item.{r.column}," for r in entity.refs)
    to_read_args.extend(
        f"        {m.name}=sorted(target.id for target in item.{m.name})," for m in entity.many
    )
    parts = [*header, ""]
    if uses_int64:
        annotated, meta = imports.name("typing", "Annotated"), imports.name("msgspec", "Meta")
        parts.extend(
            [
                "# A database integer has 64 bits: a larger number is refused with 400.",
                f"{INT64} = {annotated}[{integer}, {meta}(ge=-(2**63), le=2**63 - 1)]",
                "",
            ]
        )
    if alias_lines:
        parts.extend([*alias_lines, ""])
    parts.extend(
        [
            "",
            f"class {create}({struct}, kw_only=True, forbid_unknown_fields=True):",
            f'    """The body of `POST {entity.path}`."""',
            "",
            *(create_lines or ["    pass"]),
            "",
            "",
            f"class {update}({struct}, kw_only=True, forbid_unknown_fields=True):",
            f'    """The body of `PATCH {entity.path}/{{id}}`: only the members sent change."""',
            "",
            *(update_lines or ["    pass"]),
            "",
            "",
            f"class {read}({struct}, kw_only=True):",
            f'    """A {entity.name} as the API returns it."""',
            "",
            *read_lines,
            "",
            "",
            f"def to_read(item: {any_type}) -> {read}:",
            f'    """The API form of a {entity.name} model."""',
            f"    return {read}(",
            *to_read_args,
            "    )",
        ]
    )
    return "\n".join(parts) + "\n"
