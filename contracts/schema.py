"""The entity schema a user submits, and its validation.

The schema is decoded strictly (unknown field types are rejected by the decoder) and then
checked for the rules a decoder cannot express: identifier names, uniqueness, relation
targets that exist, enum values. Every problem names the place in the document it comes
from, so a person can fix it without guessing.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from contracts.text import text_problem

FieldType = Literal[
    "string", "text", "integer", "float", "decimal", "boolean", "date", "datetime", "uuid", "enum"
]
FIELD_TYPES: tuple[str, ...] = FieldType.__args__  # type: ignore[attr-defined]
RelationKind = Literal["many_to_one", "one_to_many", "one_to_one", "many_to_many"]
RELATION_KINDS: tuple[str, ...] = RelationKind.__args__  # type: ignore[attr-defined]

MAX_ENTITIES = 200
MAX_FIELDS_PER_ENTITY = 100
MAX_NAME_LENGTH = 64
MAX_ENUM_VALUES = 100

# Matched with `fullmatch`: `$` would also accept a trailing newline ("Product\n").
ENTITY_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
ENUM_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Field and relation names the generated code already uses for itself, and why. Any other
# snake_case name that is not a Python keyword works, the names of Litestar's handler
# parameters (`request`, `state`, `data`, `headers`, `query`, `cookies`, `socket`, `scope`,
# `body`) and `session` included: the offline templates take the database session as
# `_session`, a name no member can have (a body member named like a handler's dependency
# answers 500 instead of 400 for an invalid value), and their test suite builds and runs a
# project with these names (tests/orchestrator/providers/offline/test_project.py).
RESERVED_FIELDS: dict[str, str] = {
    "id": "every model's primary key",
    "metadata": "SQLAlchemy's declarative models define it",
    "registry": "SQLAlchemy's declarative models define it",
    "created_at": "kept for the time a row was created",
    "updated_at": "kept for the time a row last changed",
}
RESERVED_FIELD_NAMES = frozenset(RESERVED_FIELDS)
RESERVED_ENTITY_NAMES = frozenset({"Base", "Model", "Session", "Request", "Response", "App"})
PYTHON_BUILTIN_TYPES = frozenset({"Decimal", "Enum", "Date", "Datetime", "Uuid", "Any"})

Report = Callable[[str, str], None]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]


class Field(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One column of an entity."""

    name: Name
    type: FieldType
    required: bool = True
    values: list[str] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""


class Relation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A link from one entity to another."""

    name: Name
    target: Name
    kind: RelationKind = "many_to_one"
    required: bool = False


class Entity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model of the generated project."""

    name: Name
    fields: list[Field] = []
    relations: list[Relation] = []
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""


class ProjectSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The entities of a project: what the generator builds models, API and tests for."""

    entities: list[Entity]


class SchemaProblem(msgspec.Struct, frozen=True):
    """One rule a schema breaks, with the place in the document (`entities[1].fields[0].name`)."""

    location: str
    message: str


def schema_problems(schema: ProjectSchema) -> list[SchemaProblem]:
    """Every rule the schema breaks; an empty list means it is valid."""
    problems: list[SchemaProblem] = []

    def problem(location: str, message: str) -> None:
        problems.append(SchemaProblem(location, message))

    if not schema.entities:
        problem("entities", "at least one entity is required")
    if len(schema.entities) > MAX_ENTITIES:
        problem(
            "entities", f"at most {MAX_ENTITIES} entities are allowed, got {len(schema.entities)}"
        )

    entity_names = {entity.name for entity in schema.entities}
    seen_entities: dict[str, int] = {}
    for i, entity in enumerate(schema.entities):
        where = f"entities[{i}]"
        _check_entity_name(entity.name, f"{where}.name", problem)
        _check_text(entity.description, f"{where}.description", problem)
        lowered = entity.name.lower()
        if lowered in seen_entities:
            first = schema.entities[seen_entities[lowered]].name
            problem(f"{where}.name", f"duplicate entity name {entity.name!r} (same as {first!r})")
        else:
            seen_entities[lowered] = i
        if not entity.fields and not entity.relations:
            problem(where, f"entity {entity.name!r} needs at least one field or relation")
        if len(entity.fields) + len(entity.relations) > MAX_FIELDS_PER_ENTITY:
            problem(where, f"entity {entity.name!r} has more than {MAX_FIELDS_PER_ENTITY} fields")

        member_names: dict[str, str] = {}
        for j, field in enumerate(entity.fields):
            at = f"{where}.fields[{j}]"
            _check_member_name(field.name, f"{at}.name", problem)
            _check_text(field.description, f"{at}.description", problem)
            if field.name in member_names:
                problem(f"{at}.name", f"duplicate field name {field.name!r} in {entity.name!r}")
            member_names[field.name] = at
            _check_enum(field, at, problem)
        for j, relation in enumerate(entity.relations):
            at = f"{where}.relations[{j}]"
            _check_member_name(relation.name, f"{at}.name", problem)
            if relation.name in member_names or f"{relation.name}_id" in member_names:
                problem(
                    f"{at}.name",
                    f"relation {relation.name!r} clashes with a field of {entity.name!r}",
                )
            member_names[relation.name] = at
            if relation.target not in entity_names:
                known = ", ".join(sorted(entity_names)) or "none"
                problem(
                    f"{at}.target",
                    f"relation {relation.name!r} points to unknown entity {relation.target!r} "
                    f"(known entities: {known})",
                )
    return problems


def _check_text(text: str, location: str, problem: Report) -> None:
    message = text_problem(text)
    if message:
        problem(location, message)


def _check_entity_name(name: str, location: str, problem: Report) -> None:
    if not ENTITY_NAME.fullmatch(name):
        problem(
            location,
            f"entity name {name!r} must be PascalCase letters and digits, like 'OrderItem'",
        )
    elif name in RESERVED_ENTITY_NAMES or name in PYTHON_BUILTIN_TYPES or keyword.iskeyword(name):
        problem(location, f"entity name {name!r} is reserved by the generated code; choose another")


def _check_member_name(name: str, location: str, problem: Report) -> None:
    if not FIELD_NAME.fullmatch(name):
        problem(
            location,
            f"name {name!r} must be snake_case: lower-case letters, digits and '_', like 'unit_price'",
        )
    elif keyword.iskeyword(name) or keyword.issoftkeyword(name):
        problem(location, f"name {name!r} is a Python keyword; choose another")
    elif name in RESERVED_FIELDS:
        problem(location, f"name {name!r} is reserved ({RESERVED_FIELDS[name]}); choose another")


def _check_enum(field: Field, at: str, problem: Report) -> None:
    if field.type != "enum":
        if field.values is not None:
            problem(f"{at}.values", f"'values' only applies to enum fields, not {field.type!r}")
        return
    if not field.values:
        problem(f"{at}.values", f"enum field {field.name!r} needs a non-empty list of values")
        return
    if len(field.values) > MAX_ENUM_VALUES:
        problem(f"{at}.values", f"enum field {field.name!r} has more than {MAX_ENUM_VALUES} values")
    seen: set[str] = set()
    for k, value in enumerate(field.values):
        if not ENUM_VALUE.fullmatch(value) or len(value) > MAX_NAME_LENGTH:
            problem(
                f"{at}.values[{k}]", f"enum value {value!r} must be an identifier, like 'in_stock'"
            )
        elif keyword.iskeyword(value):
            problem(
                f"{at}.values[{k}]", f"enum value {value!r} is a Python keyword; choose another"
            )
        if value.lower() in seen:
            problem(f"{at}.values[{k}]", f"duplicate enum value {value!r}")
        seen.add(value.lower())
