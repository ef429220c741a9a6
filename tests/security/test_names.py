"""Names a stranger may choose: any valid project name downloads, and a name, id or text
that would break a later phase (a trailing newline, a control or bidi character) is a 400
naming the field, up front."""

from __future__ import annotations

import io
import zipfile
from typing import Any
from urllib.parse import unquote

import pytest

from tests.security.hostile_inputs import (
    HIDDEN_IN_NAMES,
    HIDDEN_IN_SCHEMA,
    hidden_character,
    id_routes,
    schema,
)
from tests.support.gateway_app import ALICE, GatewayUnderTest, gateway_app


@pytest.mark.parametrize("name", ["商店", "\u0455hop", "café au lait", 'a"b;c\\d'])
async def test_any_valid_project_name_downloads_with_an_rfc_6266_filename(name: str) -> None:
    async with gateway_app() as gw:
        accepted = await create(gw, name)
        await gw.finish(accepted["generation_id"], FILES)
        response = await gw.client.get(
            f"/generations/{accepted['generation_id']}/archive", headers=ALICE
        )
        assert response.status_code == 200, response.text
        assert zipfile.ZipFile(io.BytesIO(response.content)).testzip() is None
        disposition = response.headers["content-disposition"]
        assert disposition.isascii()
        plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
        assert plain.endswith("-v1.zip") and all(ch.isalnum() or ch in "-_." for ch in plain)
        exact = unquote(disposition.split("filename*=UTF-8''", 1)[1], errors="strict")
        expected = "".join(ch if ch.isalnum() else "-" for ch in name)
        assert exact == "-".join(filter(None, expected.split("-"))) + "-v1.zip"


FILES = {"README.md": "# shop\n", "app/models.py": "class Product: ...\n"}


async def create(gw: GatewayUnderTest, name: str) -> dict[str, Any]:
    response = await gw.client.post(
        "/generations", json={"project_name": name, "schema": schema()}, headers=ALICE
    )
    assert response.status_code == 201, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


@pytest.mark.parametrize(("schema", "location"), HIDDEN_IN_SCHEMA)
async def test_a_name_with_a_trailing_newline_or_a_hidden_character_is_a_400_naming_it(
    schema: dict[str, object], location: str
) -> None:
    async with gateway_app() as gw:
        body = {"project_name": "shop", "schema": schema, "prompt": ""}
        response = await gw.client.post("/generations", json=body, headers=ALICE)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert location in [p["location"] for p in response.json()["problems"]]
        assert gw.broker.messages == []


@pytest.mark.parametrize("name", HIDDEN_IN_NAMES)
async def test_a_project_name_with_a_control_or_bidi_character_is_a_400_naming_it(
    name: str,
) -> None:
    async with gateway_app() as gw:
        body = {"project_name": name, "schema": schema(), "prompt": ""}
        response = await gw.client.post("/generations", json=body, headers=ALICE)
        assert response.status_code == 400, response.text
        problems = response.json()["problems"]
        assert problems[0]["location"] == "project_name"
        assert hidden_character(name) in problems[0]["message"]
        assert gw.broker.messages == []


async def test_an_id_with_a_trailing_newline_is_a_400_on_any_route() -> None:
    async with gateway_app() as gw:
        accepted = await create(gw, "shop")
        gid = accepted["generation_id"]
        await gw.finish(gid, FILES)
        for method, path in id_routes(gid, accepted["project_id"]):
            response = await gw.client.request(method, path, headers=ALICE)
            assert response.status_code == 400, f"{method} {path}: {response.text}"
        iterate = await gw.client.post(
            "/generations/iterate",
            json={"parent_generation_id": f"{gid}\n", "modification_prompt": "add a field"},
            headers=ALICE,
        )
        assert iterate.status_code == 400, iterate.text
