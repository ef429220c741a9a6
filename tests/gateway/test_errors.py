"""Every error answer, as the OpenAPI document describes it and as the gateway sends it
(#17 item 6): `application/problem+json` with the `Problem` schema, the request's path as
`instance`, `WWW-Authenticate: Bearer` on a 401, `Location` on a 201, and the routes that
need no key marked `security: []`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.settings import Settings
from services.gateway.app import create_app
from services.gateway.errors import PROBLEM_JSON
from tests.support.gateway_app import ALICE, assert_problem, gateway_app, gateway_settings

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
NO_KEY = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/asyncapi")}
# The error answers each route can give, as the issue lists them.
EXPECTED = {
    ("POST", "/generations"): {400, 401, 413, 429, 503},
    ("POST", "/generations/iterate"): {400, 401, 404, 409, 413, 429, 503},
    ("POST", "/generations/{generation_id}/cancel"): {400, 401, 404, 409, 413, 503},
    ("GET", "/generations/{generation_id}"): {400, 401, 404, 503},
    ("GET", "/generations/{generation_id}/stream"): {400, 401, 404, 429, 503},
    ("GET", "/projects"): {401, 503},
    ("GET", "/projects/{project_id}"): {400, 401, 404, 503},
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The gateway's OpenAPI document, as /schema/openapi.json serves it."""
    app = create_app(Settings(api_keys="alice:0123456789abcdef", secret="s"))
    return json.loads(json.dumps(app.openapi_schema.to_schema(), default=str))


def operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }


def test_every_error_answer_is_documented_as_problem_json(openapi: dict[str, Any]) -> None:
    every = operations(openapi)
    for route, statuses in EXPECTED.items():
        errors = {int(s) for s in every[route]["responses"] if s[0] in "45"}
        assert statuses <= errors, (route, sorted(errors))
    for route, operation in every.items():
        for status, response in operation["responses"].items():
            if status[0] == "4" or (status[0] == "5" and route not in NO_KEY):
                assert response["content"] == {PROBLEM_JSON: {"schema": PROBLEM_REF}}, (
                    route,
                    status,
                )
    problem = openapi["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"title", "status", "detail", "instance"}
    assert {"type", "problems"} <= problem["properties"].keys()


def test_the_routes_that_need_no_key_say_so(openapi: dict[str, Any]) -> None:
    assert openapi["security"] == [{"BearerAuth": []}]
    for route, operation in operations(openapi).items():
        if route in NO_KEY:
            assert operation["security"] == [], route
        else:
            # Keyed: the document's BearerAuth, or (the stream) its token or a key.
            assert operation.get("security", openapi["security"]) in (
                [{"BearerAuth": []}],
                [{"StreamToken": []}, {"BearerAuth": []}],
            ), route
            assert "401" in operation["responses"], route


def test_a_201_documents_its_location(openapi: dict[str, Any]) -> None:
    every = operations(openapi)
    for route in (("POST", "/generations"), ("POST", "/generations/iterate")):
        assert "Location" in every[route]["responses"]["201"]["headers"], route


async def test_error_answers_carry_instance_and_their_headers() -> None:
    async with gateway_app(gateway_settings(KILN_MAX_BODY_BYTES="4096")) as gw:
        anonymous, alice = gw.client, {"Authorization": ALICE["Authorization"]}
        for path in ("/projects", "/generations/abc"):
            refused = await anonymous.get(path)
            assert_problem(refused, 401)
            assert refused.headers["www-authenticate"] == 'Bearer realm="kiln"'
        wrong = await anonymous.post(
            "/generations", headers={"Authorization": "Bearer wrong"}, json={}
        )
        assert_problem(wrong, 401)
        assert wrong.headers["www-authenticate"].startswith("Bearer")

        assert_problem(await anonymous.get("/generations/nope", headers=alice), 404)
        assert_problem(await anonymous.get("/no/such/route", headers=alice), 404)
        assert_problem(await anonymous.post("/generations", json={"prompt": 1}, headers=alice), 400)
        big = await anonymous.post(
            "/generations", content=b'{"prompt": "' + b"x" * 8192 + b'"}', headers=alice
        )
        assert_problem(big, 413)

        created = await anonymous.post(
            "/generations",
            json={
                "project_name": "shop",
                "prompt": "a shop",
                "schema": {
                    "entities": [{"name": "Item", "fields": [{"name": "title", "type": "string"}]}]
                },
            },
            headers=alice,
        )
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        assert (
            location
            == created.json()["status_url"]
            == (f"/generations/{created.json()['generation_id']}")
        )
        assert (await anonymous.get(location, headers=alice)).status_code == 200

        generation_id = created.json()["generation_id"]
        await gw.finish(generation_id, {"README.md": "# shop\n"})
        conflict = await anonymous.post(f"/generations/{generation_id}/cancel", headers=alice)
        assert assert_problem(conflict, 409)["generation_status"] == "completed"
