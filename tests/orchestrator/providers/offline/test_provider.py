"""The offline provider through `run_phase`, as the runner drives it: create, iterate,
locked paths, the data-loss guard, cancelling."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from contracts.phases import PHASE_NAMES
from services.orchestrator.cheats import check_repair
from services.orchestrator.guard import check_output
from services.orchestrator.providers.base import Provider, ProviderError
from services.orchestrator.providers.offline import OfflineProvider
from services.orchestrator.providers.offline import provider as offline_provider
from services.orchestrator.providers.offline.modifications import UNDERSTOOD_PROMPTS
from services.orchestrator.providers.offline.project import build_project
from services.orchestrator.providers.offline.spec import ProjectSpec, load_spec, spec_from_schema
from tests.orchestrator.providers.offline.helpers import (
    SHOP,
    FakeReporter,
    Generation,
    every_type,
    generate,
    request,
    revision_1_files,
    schema,
)


@pytest.fixture
def provider() -> OfflineProvider:
    return OfflineProvider()


@pytest.fixture
async def shop(provider: OfflineProvider) -> Generation:
    return await generate(provider, document=SHOP, prompt="a small shop")


def test_it_is_a_provider_named_offline() -> None:
    provider: Provider = OfflineProvider(phase_delay_s=0.1)
    assert provider.name == "offline"


async def test_create_writes_the_whole_project_phase_by_phase(shop: Generation) -> None:
    spec = spec_from_schema("shop", schema(SHOP), "a small shop")
    expected = build_project(spec)

    assert shop.files == {path: content for path, (_, content) in expected.items()}
    for phase in PHASE_NAMES:
        output = shop.outputs[phase]
        assert {f.path for f in output.files} == {
            path for path, (owner, _) in expected.items() if owner == phase
        }
        assert output.deletions == []
        assert output.summary.endswith(".") and output.summary.count(". ") == 0, output.summary
    assert shop.outputs["verify"].files == []
    assert [f.path for f in shop.outputs["plan"].files] == [
        ".gitignore",
        "app/__init__.py",
        "kiln.json",
        "pyproject.toml",
    ]
    assert load_spec(shop.files["kiln.json"]).description == "a small shop"


async def test_the_same_request_gives_the_same_output(provider: OfflineProvider) -> None:
    first = await generate(provider, document=SHOP)
    second = await generate(OfflineProvider(), document=SHOP)

    assert first.outputs == second.outputs
    corrected = await provider.run_phase(
        request("models", document=SHOP, correction="the previous output was rejected"),
        FakeReporter(),
    )
    assert corrected == first.outputs["models"]


async def test_create_without_a_schema_is_refused(provider: OfflineProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        await provider.run_phase(request("plan"), FakeReporter())
    assert raised.value.kind == "unsupported_prompt"


async def test_a_schema_too_large_for_the_limits_is_refused(provider: OfflineProvider) -> None:
    fields = [{"name": f"f{i}", "type": "string", "description": "d" * 400} for i in range(99)]
    document = {"entities": [{"name": f"E{i}", "fields": fields} for i in range(200)]}

    with pytest.raises(ProviderError) as raised:
        await provider.run_phase(request("plan", document=document), FakeReporter())

    assert raised.value.kind == "limits"
    assert "kiln.json would be" in raised.value.message


async def test_a_generation_makes_and_checks_its_spec_once(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real = offline_provider.spec_from_schema

    def counted(name: str, *args: Any) -> ProjectSpec:
        made.append(name)
        return real(name, *args)

    monkeypatch.setattr(offline_provider, "spec_from_schema", counted)
    document = {"entities": [{"name": "Once", "fields": [{"name": "x", "type": "string"}]}]}

    first = await generate(provider, document=document, prompt="made once")
    again = await generate(provider, document=document, prompt="made once")
    other = await generate(provider, document=document, prompt="another description")

    assert made == ["shop", "shop"]  # once per distinct request, not once per phase
    assert first.outputs == again.outputs
    assert load_spec(other.files["kiln.json"]).description == "another description"


async def test_a_schema_that_fails_its_checks_fails_every_phase(
    provider: OfflineProvider,
) -> None:
    document = {"entities": [{"name": "Thing", "fields": [{"name": "id", "type": "string"}]}]}

    for phase in ("plan", "models"):
        with pytest.raises(ProviderError) as raised:
            await provider.run_phase(request(phase, document=document), FakeReporter())
        assert raised.value.kind == "unsupported_prompt"


async def test_iterate_add_authentication(provider: OfflineProvider, shop: Generation) -> None:
    result = await generate(
        provider, kind="iterate", prompt="add authentication", parent=shop.files
    )

    written = {f.path for o in result.outputs.values() for f in o.files}
    assert {
        "app/auth/models.py",
        "app/auth/security.py",
        "app/auth/routes.py",
        "tests/auth/test_auth.py",
        "app/routes/product.py",
        "kiln.json",
    } <= written
    assert "app/db.py" not in written, "untouched files are not rewritten"
    assert all(not o.deletions for o in result.outputs.values())
    assert load_spec(result.files["kiln.json"]).features == ["auth"]
    assert "hashlib.pbkdf2_hmac" in result.files["app/auth/security.py"]
    assert result.files["app/routes/product.py"].count("guards=ROUTE_GUARDS") == 5, "every route"
    assert result.outputs["api"].summary == "Wrote 6 files to add authentication."


async def test_iterate_add_tests_writes_new_test_modules_and_changes_no_test(
    provider: OfflineProvider, shop: Generation
) -> None:
    result = await generate(provider, kind="iterate", prompt="add tests", parent=shop.files)

    written = {f.path for o in result.outputs.values() for f in o.files}
    new_tests = {p for p in written if p.startswith("tests/")}
    assert new_tests == {
        "tests/edge_cases/__init__.py",
        "tests/edge_cases/conftest.py",
        "tests/edge_cases/helpers.py",
        "tests/edge_cases/test_category.py",
        "tests/edge_cases/test_product.py",
        "tests/edge_cases/test_tag.py",
    }
    assert written - new_tests == {"kiln.json", "README.md"}
    assert not new_tests & set(shop.files), "only new files"
    assert all(not o.deletions for o in result.outputs.values())
    changed = {p for p, c in shop.files.items() if result.files[p] != c}
    assert changed == {"kiln.json", "README.md"}, "no existing test (or other file) changed"
    # What the guard asks of a repair holds here too: no test deleted, emptied or weakened.
    for phase, output in result.outputs.items():
        assert check_repair(output, current=shop.files) == [], phase
    product = result.files["tests/edge_cases/test_product.py"]
    for name in (
        "test_title_refuses_wrong_values",
        "test_price_takes_the_values_at_its_edges",
        "test_status_refuses_wrong_values",
        "test_released_takes_the_values_at_its_edges",
        "test_an_id_that_names_no_row_is_404",
        "test_a_body_that_is_not_an_object_is_refused",
        "test_category_id_is_checked_on_update",
        "test_deleting_the_category_of_category_id",
        "test_tags_edge_cases",
    ):
        assert f"def {name}(" in product, name
    added = sum(
        c.count("\ndef test_") for p, c in result.files.items() if p.startswith("tests/edge_")
    )
    summary = result.outputs["tests"].summary
    assert summary == (
        f"Wrote 6 files to add edge-case tests. They hold {added} new tests; "
        "no existing test changed."
    )
    assert load_spec(result.files["kiln.json"]).features == ["edge_cases"]


async def test_add_tests_again_adds_nothing_twice(
    provider: OfflineProvider, shop: Generation
) -> None:
    tested = await generate(provider, kind="iterate", prompt="add tests", parent=shop.files)

    again = await generate(provider, kind="iterate", prompt="add more tests", parent=tested.files)
    assert again.files == tested.files
    assert all(not o.files and not o.deletions for o in again.outputs.values())
    assert again.outputs["tests"].summary.endswith(
        "The project already had its edge-case tests (tests/edge_cases/): nothing to add."
    )

    lost = dict(tested.files)
    del lost["tests/edge_cases/test_tag.py"]
    refilled = await generate(provider, kind="iterate", prompt="add tests", parent=lost)
    assert [f.path for f in refilled.outputs["tests"].files] == ["tests/edge_cases/test_tag.py"]
    assert refilled.files == tested.files
    assert "only the missing files were written" in refilled.outputs["tests"].summary


async def test_a_test_file_someone_wrote_at_the_same_path_is_kept(
    provider: OfflineProvider, shop: Generation
) -> None:
    mine = "def test_mine() -> None:\n    assert 1 + 1 == 2\n"
    parent = {**shop.files, "tests/edge_cases/test_tag.py": mine}

    result = await generate(provider, kind="iterate", prompt="add tests", parent=parent)

    assert result.files["tests/edge_cases/test_tag.py"] == mine
    assert "tests/edge_cases/test_product.py" in result.files
    assert "Kept tests/edge_cases/test_tag.py as written" in result.outputs["tests"].summary


async def test_add_tests_to_a_project_built_before_the_64_bit_bounds(
    provider: OfflineProvider,
) -> None:
    parent = revision_1_files({"entities": [*SHOP["entities"], *every_type(1)["entities"]]})
    assert "MAX_ID" not in parent["app/crud.py"]

    result = await generate(provider, kind="iterate", prompt="add tests", parent=parent)

    assert load_spec(result.files["kiln.json"]).revision == 1, "the project keeps its revision"
    changed = {p for p, c in parent.items() if result.files[p] != c}
    assert changed == {"kiln.json", "README.md"}
    edge_cases = "".join(c for p, c in result.files.items() if p.startswith("tests/edge_cases/"))
    assert "def test_an_id_that_names_no_row_is_404(" in edge_cases
    assert "9223372036854775807" in edge_cases, "the largest integer is still accepted"
    beyond = re.findall(r"(?<![-\d])9223372036854775808|-9223372036854775809", edge_cases)
    assert beyond == [], "no bound the app does not have"


async def test_entities_added_after_the_tests_get_theirs(
    provider: OfflineProvider, shop: Generation
) -> None:
    tested = await generate(provider, kind="iterate", prompt="add tests", parent=shop.files)

    result = await generate(
        provider,
        kind="iterate",
        prompt="add entity Review with fields stars:integer and relation product to Product",
        parent=tested.files,
    )

    assert "tests/edge_cases/test_review.py" in set(result.files) - set(tested.files)
    assert "def test_stars_refuses_wrong_values(" in result.files["tests/edge_cases/test_review.py"]


async def test_iterate_add_an_entity(provider: OfflineProvider, shop: Generation) -> None:
    result = await generate(
        provider,
        kind="iterate",
        prompt="add entity Review with fields body:text, stars:integer and relation product to Product",
        parent=shop.files,
    )

    new = set(result.files) - set(shop.files)
    assert new == {
        "app/models/review.py",
        "app/schemas/review.py",
        "app/routes/review.py",
        "tests/factories/review.py",
        "tests/test_review.py",
    }
    assert "Review" in result.files["app/models/__init__.py"]
    assert "/reviews" in result.files["docs/api.md"]


async def test_iterate_remove_an_entity_deletes_its_files_explicitly(
    provider: OfflineProvider, shop: Generation
) -> None:
    result = await generate(provider, kind="iterate", prompt="remove entity Tag", parent=shop.files)

    deleted = {d.path: phase for phase, o in result.outputs.items() for d in o.deletions}
    assert deleted == {
        "app/models/tag.py": "models",
        "app/schemas/tag.py": "schemas",
        "app/routes/tag.py": "api",
        "tests/factories/tag.py": "tests",
        "tests/test_tag.py": "tests",
    }
    for output in result.outputs.values():
        for deletion in output.deletions:
            assert deletion.reason == "no longer part of the project after: remove entity Tag"
    for path, content in result.files.items():
        assert not re.search(r"\bTag\b|/tags\b|__tags\b", content), path
    assert (
        result.outputs["models"].summary == "Wrote 2 files and deleted 1 file to remove entity Tag."
    )


async def test_a_file_that_shrinks_by_more_than_half_says_why(provider: OfflineProvider) -> None:
    two = {
        "entities": [
            SHOP["entities"][2],
            {
                "name": "Big",
                "fields": [
                    {
                        "name": f"field_{i}",
                        "type": "string",
                        "description": "a long description " * 5,
                    }
                    for i in range(40)
                ],
            },
        ]
    }
    parent = (await generate(provider, document=two)).files

    result = await generate(provider, kind="iterate", prompt="remove entity Big", parent=parent)

    rewritten = {f.path: f for o in result.outputs.values() for f in o.files}
    assert rewritten["docs/api.md"].rewrite_reason is not None
    assert "remove entity Big" in rewritten["docs/api.md"].rewrite_reason
    assert rewritten["app/models/__init__.py"].rewrite_reason is None


async def test_files_the_builder_did_not_make_are_kept(
    provider: OfflineProvider, shop: Generation
) -> None:
    parent = {
        **shop.files,
        "notes/todo.md": "- ship it\n",
        "app/extra.py": "EXTRA = 1\n",
        "app/crud.py": shop.files["app/crud.py"] + "\n# a helper added by hand\n",
    }

    result = await generate(
        provider, kind="iterate", prompt="remove entity Tag and add pagination", parent=parent
    )

    touched = {f.path for o in result.outputs.values() for f in o.files} | {
        d.path for o in result.outputs.values() for d in o.deletions
    }
    assert not touched & {"notes/todo.md", "app/extra.py", "app/crud.py"}
    assert result.files["app/crud.py"] == parent["app/crud.py"], "a hand edit survives"


async def test_a_locked_readme_is_left_as_it_is(
    provider: OfflineProvider, shop: Generation
) -> None:
    result = await generate(
        provider, kind="iterate", prompt="add pagination", parent=shop.files, locked=["README.md"]
    )

    assert result.files["README.md"] == shop.files["README.md"]
    assert result.files["docs/api.md"] != shop.files["docs/api.md"]
    assert "Left the locked README.md as it is." in result.outputs["docs"].summary


@pytest.mark.parametrize(
    ("prompt", "locked", "named"),
    [
        ("add pagination", "app/routes/product.py", "app/routes/product.py (it would change)"),
        ("remove entity Tag", "tests/test_tag.py", "tests/test_tag.py (it would be deleted)"),
        ("add docker", "kiln.json", "kiln.json (it would change)"),
    ],
)
async def test_a_change_to_locked_code_stops_before_anything_is_written(
    provider: OfflineProvider, shop: Generation, prompt: str, locked: str, named: str
) -> None:
    with pytest.raises(ProviderError) as raised:
        await provider.run_phase(
            request(
                "plan",
                kind="iterate",
                prompt=prompt,
                files=shop.files,
                parent=shop.files,
                locked=[locked],
            ),
            FakeReporter(),
        )

    assert raised.value.kind == "unsupported_prompt"
    assert named in raised.value.message and "Unlock" in raised.value.message


async def test_locked_files_the_change_does_not_need_are_fine(
    provider: OfflineProvider, shop: Generation
) -> None:
    locked = ["app/db.py", "app/crud.py", "tests/conftest.py"]
    result = await generate(
        provider, kind="iterate", prompt="add pagination", parent=shop.files, locked=locked
    )
    assert load_spec(result.files["kiln.json"]).features == ["pagination"]


async def test_iterating_needs_the_parents_kiln_json(
    provider: OfflineProvider, shop: Generation
) -> None:
    without = {p: c for p, c in shop.files.items() if p != "kiln.json"}
    broken = {**shop.files, "kiln.json": json.dumps({"name": "x"})}

    for parent, named in [(without, "has no kiln.json"), (broken, "cannot be read")]:
        with pytest.raises(ProviderError) as raised:
            await provider.run_phase(
                request("plan", kind="iterate", prompt="add auth", files=parent, parent=parent),
                FakeReporter(),
            )
        assert raised.value.kind == "unsupported_prompt"
        assert named in raised.value.message


async def test_an_unknown_prompt_lists_the_understood_forms(
    provider: OfflineProvider, shop: Generation
) -> None:
    with pytest.raises(ProviderError) as raised:
        await provider.run_phase(
            request(
                "plan",
                kind="iterate",
                prompt="make it faster",
                files=shop.files,
                parent=shop.files,
            ),
            FakeReporter(),
        )

    assert raised.value.kind == "unsupported_prompt"
    assert all(form in raised.value.message for form in UNDERSTOOD_PROMPTS)
    assert "for free-text changes use the gemini provider" in raised.value.message


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        (
            "add fields Title:string to Product",
            "Product.fields[5].name: name 'Title' must be snake_case",
        ),
        ("add entity Base with fields x:string", "reserved by the generated code"),
        ("add authentication", "used by the authentication feature"),
        ("add fields x:string to Order", "no entity 'Order'"),
    ],
)
async def test_invalid_names_are_refused_with_the_schema_rule(
    provider: OfflineProvider, shop: Generation, prompt: str, named: str
) -> None:
    parent = shop.files
    if prompt == "add authentication":  # with an entity named like an auth model
        adding = "add entity AuthUser with fields x:string"
        parent = (await generate(provider, kind="iterate", prompt=adding, parent=parent)).files

    with pytest.raises(ProviderError) as raised:
        await provider.run_phase(
            request("plan", kind="iterate", prompt=prompt, files=parent, parent=parent),
            FakeReporter(),
        )

    assert raised.value.kind == "unsupported_prompt"
    assert named in raised.value.message


async def test_a_chain_of_iterations_keeps_passing_the_guard(
    provider: OfflineProvider, shop: Generation
) -> None:
    files = shop.files
    for prompt in [
        "add authentication",
        "add tests",
        "add pagination; add a Dockerfile",
        "add entity Review with fields body:text, mood:enum(happy|sad) and relation product to Product",
        "add fields sku:string?, weight:float? to Product",
        "remove entity Category",
    ]:
        files = (await generate(provider, kind="iterate", prompt=prompt, parent=files)).files
    spec = load_spec(files["kiln.json"])
    assert [e.name for e in spec.entities] == ["Product", "Tag", "Review"]
    assert spec.features == ["auth", "docker", "edge_cases", "pagination"]
    assert "tests/edge_cases/test_review.py" in files
    assert "tests/edge_cases/test_category.py" not in files
    assert files == {path: c for path, (_, c) in build_project(spec).items()}


async def test_every_iteration_output_passes_the_guard_on_its_own(
    provider: OfflineProvider, shop: Generation
) -> None:
    for phase in PHASE_NAMES:
        output = await provider.run_phase(
            request(
                "iterate" and phase,
                kind="iterate",
                prompt="remove entity Tag",
                files=shop.files,
                parent=shop.files,
            ),
            FakeReporter(),
        )
        _, violations = check_output(output, current=shop.files, locked=frozenset())
        assert violations == []


async def test_a_cancelled_generation_stops_at_once() -> None:
    reporter = FakeReporter()
    reporter.cancel = True

    with pytest.raises(ProviderError) as raised:
        await OfflineProvider().run_phase(request("plan", document=SHOP), reporter)

    assert raised.value.kind == "cancelled"


async def test_the_delay_reports_progress_and_stops_early_when_cancelled() -> None:
    provider = OfflineProvider(phase_delay_s=0.3)
    reporter = FakeReporter()

    started = time.monotonic()
    output = await provider.run_phase(request("models", document=SHOP), reporter)
    assert time.monotonic() - started >= 0.3
    size = sum(len(f.content.encode()) for f in output.files)
    assert reporter.progress_bytes[-1] == size
    assert (
        reporter.progress_bytes == sorted(reporter.progress_bytes)
        and len(reporter.progress_bytes) > 2
    )
    assert reporter.llm_calls == [], "no model is called, so none is reported"

    slow = OfflineProvider(phase_delay_s=5)
    cancelling = FakeReporter()

    async def cancel_soon() -> None:
        await asyncio.sleep(0.1)
        cancelling.cancel = True

    started = time.monotonic()
    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(ProviderError) as raised:
        await slow.run_phase(request("models", document=SHOP), cancelling)
    await canceller
    assert raised.value.kind == "cancelled"
    assert time.monotonic() - started < 1
