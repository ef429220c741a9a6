"""kiln.json: the project spec, canonical and round-tripping, and its validation."""

from __future__ import annotations

import json

import msgspec
import pytest

from contracts.schema import Entity, Field, Relation
from services.orchestrator.providers.offline.spec import (
    TEMPLATES_REVISION,
    ProjectSpec,
    SpecError,
    dump_spec,
    load_spec,
    spec_from_schema,
    spec_problems,
)
from tests.orchestrator.providers.offline.helpers import SHOP, schema


def shop_spec(**changes: object) -> ProjectSpec:
    spec = spec_from_schema("shop", schema(SHOP), "a small shop")
    return msgspec.structs.replace(spec, **changes)


def test_a_spec_round_trips_through_kiln_json() -> None:
    spec = shop_spec(features=["pagination", "auth"])

    text = dump_spec(spec)

    assert load_spec(text) == msgspec.structs.replace(spec, features=["auth", "pagination"])
    assert load_spec(text).entities == schema(SHOP).entities


def test_kiln_json_is_canonical() -> None:
    text = dump_spec(shop_spec(features=["pagination", "auth", "auth"]))

    assert text.endswith("}\n") and not text.endswith("\n\n")
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert document["features"] == ["auth", "pagination"]
    assert document["format"] == 1 and document["name"] == "shop"
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert dump_spec(load_spec(text)) == text


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("not json", "not a valid project spec"),
        ('{"name": "x"}', "entities"),
        ('{"name": "x", "entities": [], "surprise": 1}', "surprise"),
        ('{"name": "x", "entities": [], "features": ["teleport"]}', "features"),
        ('{"format": 9, "name": "x", "entities": []}', "format 9"),
        ('{"revision": 4, "name": "x", "entities": []}', "templates revision 4"),
    ],
)
def test_an_unreadable_kiln_json_says_why(text: str, named: str) -> None:
    with pytest.raises(SpecError, match=named):
        load_spec(text)


def test_a_kiln_json_from_before_the_templates_revision_is_revision_1() -> None:
    assert load_spec('{"format": 1, "name": "x", "entities": []}').revision == 1
    assert shop_spec().revision == TEMPLATES_REVISION == 3
    assert json.loads(dump_spec(shop_spec()))["revision"] == 3


def test_problems_name_the_entity_not_its_index() -> None:
    spec = shop_spec(
        entities=[*schema(SHOP).entities, Entity(name="Bad", fields=[Field("Title", "string")])]
    )

    problems = spec_problems(spec)

    assert len(problems) == 1
    assert problems[0].startswith("Bad.fields[0].name: name 'Title' must be snake_case")


def test_authentication_reserves_its_model_names() -> None:
    entities = [*schema(SHOP).entities, Entity(name="AuthUser", fields=[Field("x", "string")])]

    assert spec_problems(shop_spec(entities=entities)) == []
    problems = spec_problems(shop_spec(entities=entities, features=["auth"]))
    assert problems == [
        "AuthUser: the entity name 'AuthUser' is used by the authentication feature; choose another"
    ]


def test_a_relation_member_may_not_clash_with_another() -> None:
    entity = Entity(
        name="Post",
        fields=[Field("title", "string")],
        relations=[
            Relation("owner", "Post"),
            Relation("owner_id", "Post", kind="many_to_many"),
        ],
    )

    problems = spec_problems(shop_spec(entities=[entity]))

    assert len(problems) == 1 and "'owner_id' clashes" in problems[0]


def test_the_shop_spec_is_valid() -> None:
    assert spec_problems(shop_spec()) == []
