"""Every route of the OpenAPI document checks the owner: another user's ids get 404.

The routes are read from the gateway's own OpenAPI document, so a new route with an id in
its path is attacked here without anyone remembering to add it; a new route without one
fails the test until it is classified below.
"""

from __future__ import annotations

from typing import Any

from services.common.settings import Settings
from tests.support.stack import running_stack

# Routes that name no generation or project: they act on the caller's own data only.
OWNER_FREE = {
    ("POST", "/generations"),
    ("GET", "/projects"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/asyncapi"),
}


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


async def test_every_route_hides_another_users_generation(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        alice = await stack.create_completed()
        files = (await stack.alice.get(f"/generations/{alice['generation_id']}/files")).json()
        values = {
            "generation_id": alice["generation_id"],
            "project_id": alice["project_id"],
            "file_path": files["files"][0]["path"],
        }
        openapi = (await stack.anonymous.get("/schema/openapi.json")).json()
        attacked: list[str] = []
        for method, template, _operation in _operations(openapi):
            if (method, template) in OWNER_FREE:
                continue
            if (method, template) == ("POST", "/generations/iterate"):
                body: dict[str, Any] | None = {
                    "parent_generation_id": alice["generation_id"],
                    "modification_prompt": "add pagination",
                }
                path = template
            else:
                names = [part[1:-1].split(":")[0] for part in template.split("/") if "{" in part]
                assert names, (
                    f"{method} {template} names no generation or project: add it to OWNER_FREE "
                    "if it only ever acts on the caller's own data"
                )
                path = template
                for name in names:
                    path = path.replace(f"{{{name}}}", values[name])
                body = None
            response = await stack.bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            attacked.append(f"{method} {template}")

        # The routes of the design are all among those attacked.
        for route in [
            "GET /generations/{generation_id}",
            "GET /generations/{generation_id}/files",
            "GET /generations/{generation_id}/files/{file_path}",
            "GET /generations/{generation_id}/archive",
            "GET /generations/{generation_id}/diff",
            "GET /generations/{generation_id}/events",
            "GET /generations/{generation_id}/stream",
            "POST /generations/{generation_id}/stream-token",
            "POST /generations/{generation_id}/cancel",
            "POST /generations/iterate",
            "GET /projects/{project_id}",
        ]:
            assert route in attacked, f"{route} was not in the OpenAPI document"

        # Bob sees none of Alice's projects, and Alice's data is unchanged.
        assert (await stack.bob.get("/projects")).json() == {"projects": []}
        status = (await stack.alice.get(f"/generations/{alice['generation_id']}")).json()
        assert status["status"] == "completed"
        assert len((await stack.alice.get("/projects")).json()["projects"]) == 1


async def test_an_unknown_id_and_another_users_id_look_the_same(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        alice = await stack.create_completed()
        theirs = await stack.bob.get(f"/generations/{alice['generation_id']}")
        missing = await stack.bob.get("/generations/00000000-0000-4000-8000-000000000000")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["title"] == missing.json()["title"]
        assert theirs.json()["detail"].replace(alice["generation_id"], "X") == missing.json()[
            "detail"
        ].replace("00000000-0000-4000-8000-000000000000", "X")
