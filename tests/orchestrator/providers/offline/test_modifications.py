"""The modification prompts the offline provider understands, and what they do to a spec."""

from __future__ import annotations

import pytest

from contracts.schema import Field, Relation
from services.orchestrator.providers.offline.modifications import (
    UNDERSTOOD_PROMPTS,
    AddEntity,
    AddFeature,
    AddFields,
    ModificationError,
    RemoveEntity,
    apply,
    describe,
    parse_prompt,
)
from services.orchestrator.providers.offline.spec import (
    ProjectSpec,
    spec_from_schema,
    spec_problems,
)
from tests.orchestrator.providers.offline.helpers import SHOP, schema


@pytest.fixture
def spec() -> ProjectSpec:
    return spec_from_schema("shop", schema(SHOP))


@pytest.mark.parametrize(
    ("prompt", "feature"),
    [
        ("add authentication", "auth"),
        ("Add auth.", "auth"),
        ("add login", "auth"),
        ("  add   user authentication!  ", "auth"),
        ("add pagination", "pagination"),
        ("Add pagination to the list endpoints", "pagination"),
        ("add a Dockerfile", "docker"),
        ("add docker", "docker"),
        ("ADD DOCKER SUPPORT", "docker"),
        ("add tests", "edge_cases"),
        ("Add more tests.", "edge_cases"),
        ("more tests", "edge_cases"),
        ("write some extra tests", "edge_cases"),
        ("test the edge cases", "edge_cases"),
        ("add edge-case tests", "edge_cases"),
        ("add tests for edge cases, 404s and validation errors", "edge_cases"),
    ],
)
def test_features(prompt: str, feature: str) -> None:
    assert parse_prompt(prompt) == [AddFeature(feature)]


def test_add_entity_with_fields_and_a_relation() -> None:
    prompt = (
        "add entity review with fields body:text, stars:integer, mood:enum(happy, sad) "
        "and relation product to product required"
    )

    [modification] = parse_prompt(prompt)

    assert isinstance(modification, AddEntity)
    entity = modification.entity
    assert entity.name == "Review"
    assert entity.fields == [
        Field("body", "text"),
        Field("stars", "integer"),
        Field("mood", "enum", values=["happy", "sad"]),
    ]
    assert entity.relations == [Relation("product", "product", required=True)]


def test_add_entity_with_a_relation_kind_and_optional_fields() -> None:
    [modification] = parse_prompt(
        "add entity Label with fields name:str, weight:decimal? and relation items to Product "
        "as many_to_many"
    )

    assert isinstance(modification, AddEntity)
    assert modification.entity.fields == [
        Field("name", "string"),
        Field("weight", "decimal", required=False),
    ]
    assert modification.entity.relations == [Relation("items", "Product", kind="many_to_many")]


def test_add_fields() -> None:
    assert parse_prompt("add fields sku:string, weight:float? to product") == [
        AddFields("product", (Field("sku", "string"), Field("weight", "float", required=False)))
    ]
    assert parse_prompt("add field rating:integer to Product.") == [
        AddFields("Product", (Field("rating", "integer"),))
    ]


def test_remove_entity() -> None:
    assert parse_prompt("remove entity Tag") == [RemoveEntity("Tag")]
    assert parse_prompt("delete the entity tag") == [RemoveEntity("tag")]


def test_several_modifications_in_one_prompt() -> None:
    modifications = parse_prompt(
        "add auth and pagination; add entity Note with fields text:text, remove entity Tag"
    )

    assert [type(m) for m in modifications] == [AddFeature, AddFeature, AddEntity, RemoveEntity]
    assert describe(modifications) == (
        "add authentication, add pagination, add entity Note and remove entity Tag"
    )


@pytest.mark.parametrize(
    "prompt", ["make it nicer", "", "add a cache", "rename Product to Item", "add entity"]
)
def test_an_unknown_prompt_lists_what_is_understood(prompt: str) -> None:
    with pytest.raises(ModificationError) as raised:
        parse_prompt(prompt)

    message = str(raised.value)
    assert "does not understand" in message
    for form in UNDERSTOOD_PROMPTS:
        assert form in message
    assert "for free-text changes use the gemini provider" in message


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("add fields price:money2 to Product", "unknown field type 'money2'"),
        ("add fields status:enum to Product", "needs its values"),
        ("add fields count:integer(1|2) to Product", "only enum fields list values"),
        ("add entity Note with fields text", "is not a field"),
        ("add entity Note with relation owner to Product as sideways", "unknown relation kind"),
    ],
)
def test_a_malformed_part_says_what_is_wrong(prompt: str, named: str) -> None:
    with pytest.raises(ModificationError, match=named):
        parse_prompt(prompt)


def test_apply_adds_an_entity_resolving_relation_targets(spec: ProjectSpec) -> None:
    changed = apply(
        spec,
        parse_prompt("add entity Review with fields body:text and relation product to PRODUCT"),
    )

    assert [e.name for e in changed.entities] == ["Category", "Product", "Tag", "Review"]
    assert changed.entities[-1].relations == [Relation("product", "Product")]
    assert spec_problems(changed) == []


def test_apply_adds_fields_to_an_entity_named_in_any_case(spec: ProjectSpec) -> None:
    changed = apply(spec, parse_prompt("add fields sku:string to product"))

    product = changed.entity("Product")
    assert product is not None and product.fields[-1] == Field("sku", "string")


def test_apply_removes_an_entity_and_the_relations_to_it(spec: ProjectSpec) -> None:
    changed = apply(spec, parse_prompt("remove entity tag"))

    assert [e.name for e in changed.entities] == ["Category", "Product"]
    product = changed.entity("Product")
    assert product is not None and [r.name for r in product.relations] == ["category"]
    assert spec_problems(changed) == []


def test_apply_turns_features_on_once(spec: ProjectSpec) -> None:
    changed = apply(spec, parse_prompt("add docker and auth"))

    assert changed.features == ["auth", "docker"]
    with pytest.raises(ModificationError, match="already has authentication"):
        apply(changed, parse_prompt("add login"))


def test_add_tests_combines_with_other_modifications() -> None:
    assert parse_prompt("add pagination and more tests") == [
        AddFeature("pagination"),
        AddFeature("edge_cases"),
    ]
    [entity] = parse_prompt("add entity Test with fields name:string")
    assert isinstance(entity, AddEntity) and entity.entity.name == "Test"


def test_asking_for_tests_twice_is_not_an_error(spec: ProjectSpec) -> None:
    changed = apply(spec, parse_prompt("add tests"))

    assert changed.features == ["edge_cases"]
    assert apply(changed, parse_prompt("add more tests")) == changed


def test_an_unknown_entity_is_named_with_the_known_ones(spec: ProjectSpec) -> None:
    with pytest.raises(
        ModificationError, match=r"no entity 'Order' \(its entities: Category, Product, Tag\)"
    ):
        apply(spec, parse_prompt("add fields total:decimal to Order"))


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("add entity Base with fields x:string", "reserved by the generated code"),
        ("add fields Title:string to Product", "must be snake_case"),
        ("add fields class:string to Product", "Python keyword"),
        ("add fields title:text to Product", "duplicate field name 'title'"),
        ("add entity Tag with fields x:string", "duplicate entity name"),
        (
            "add entity Note with fields x:string and relation owner to Ghost",
            "unknown entity 'Ghost'",
        ),
        (
            "remove entity Category and remove entity Product and remove entity Tag",
            "at least one entity",
        ),
    ],
)
def test_new_names_follow_the_schema_rules(spec: ProjectSpec, prompt: str, named: str) -> None:
    problems = spec_problems(apply(spec, parse_prompt(prompt)))

    assert any(named in problem for problem in problems), problems
