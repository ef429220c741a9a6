"""The entity schema: what a person gets told when it is wrong."""

from __future__ import annotations

import msgspec
import pytest

from contracts.schema import ProjectSchema, schema_problems


def problems(doc: dict) -> list[str]:
    return [
        f"{p.location}: {p.message}" for p in schema_problems(msgspec.convert(doc, ProjectSchema))
    ]


def entity(name: str, *fields: tuple[str, str], relations: list[dict] | None = None) -> dict:
    return {
        "name": name,
        "fields": [{"name": n, "type": t} for n, t in fields],
        "relations": relations or [],
    }


def test_a_valid_schema_has_no_problems() -> None:
    doc = {
        "entities": [
            entity("Category", ("title", "string")),
            entity(
                "Product",
                ("title", "string"),
                ("price", "decimal"),
                relations=[{"name": "category", "target": "Category", "kind": "many_to_one"}],
            ),
        ]
    }
    assert problems(doc) == []


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"entities": []}, "at least one entity"),
        ({"entities": [entity("product", ("a", "string"))]}, "PascalCase"),
        (
            {"entities": [entity("A", ("a", "string")), entity("A", ("b", "string"))]},
            "duplicate entity name",
        ),
        ({"entities": [entity("A", ("Title", "string"))]}, "snake_case"),
        ({"entities": [entity("A", ("class", "string"))]}, "Python keyword"),
        ({"entities": [entity("A", ("id", "string"))]}, "reserved"),
        ({"entities": [entity("A", ("a", "string"), ("a", "text"))]}, "duplicate field name"),
        ({"entities": [entity("A", ("a", "enum"))]}, "non-empty list of values"),
        (
            {"entities": [entity("A", relations=[{"name": "b", "target": "B"}])]},
            "unknown entity 'B'",
        ),
        ({"entities": [entity("Base", ("a", "string"))]}, "reserved"),
        ({"entities": [entity("Product\n", ("a", "string"))]}, "PascalCase"),
        ({"entities": [entity("A", ("title\n", "string"))]}, "snake_case"),
        (
            {"entities": [entity("A", relations=[{"name": "b\n", "target": "A"}])]},
            "snake_case",
        ),
        (
            {
                "entities": [
                    {"name": "A", "fields": [{"name": "a", "type": "enum", "values": ["x\n"]}]}
                ]
            },
            "must be an identifier",
        ),
        (
            {"entities": [{**entity("A", ("a", "string")), "description": "safe\u202e"}]},
            "U+202E RIGHT-TO-LEFT OVERRIDE",
        ),
        (
            {
                "entities": [
                    {
                        "name": "A",
                        "fields": [{"name": "a", "type": "string", "description": "\x00"}],
                    }
                ]
            },
            "U+0000",
        ),
    ],
)
def test_each_broken_rule_is_named(doc: dict, expected: str) -> None:
    found = problems(doc)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("id", "primary key"),
        ("metadata", "SQLAlchemy"),
        ("registry", "SQLAlchemy"),
        ("created_at", "created"),
    ],
)
def test_a_reserved_name_says_why(name: str, why: str) -> None:
    [found] = problems({"entities": [entity("A", (name, "string"))]})
    assert found.startswith("entities[0].fields[0].name: ")
    assert f"name {name!r} is reserved (" in found and why in found and "choose another" in found


# Names that Litestar's handlers, SQLAlchemy's models or the offline templates use for
# something of their own, which fields and relations may nevertheless have (the generated
# project of such names passes its tests: test_project.HANDLER_NAMES).
HANDLER_NAMES = (
    "session", "request", "state", "data", "headers", "query", "cookies", "socket", "scope",
    "body", "type_annotation_map", "item_id", "limit", "offset", "values", "self", "connection",
)  # fmt: skip


def test_names_the_generated_handlers_use_are_allowed() -> None:
    fields = [(name, "string") for name in HANDLER_NAMES]
    relations = [{"name": name, "target": "A"} for name in ("session", "request", "data")]
    relations.append({"name": "state", "target": "A", "kind": "many_to_many"})
    doc = {"entities": [entity("A", *fields), entity("B", ("x", "string"), relations=relations)]}

    assert problems(doc) == []


def test_the_location_points_into_the_document() -> None:
    found = problems({"entities": [entity("A", ("ok", "string"), ("Bad", "string"))]})
    assert found[0].startswith("entities[0].fields[1].name")


def test_unknown_field_types_are_refused_by_the_decoder() -> None:
    with pytest.raises(msgspec.ValidationError, match="type"):
        msgspec.convert({"entities": [entity("A", ("a", "blob"))]}, ProjectSchema)


def test_enum_values_are_checked() -> None:
    doc = {
        "entities": [
            {
                "name": "A",
                "fields": [{"name": "s", "type": "enum", "values": ["ok", "ok", "not ok"]}],
            }
        ]
    }
    found = problems(doc)
    assert any("duplicate enum value" in p for p in found)
    assert any("must be an identifier" in p for p in found)
