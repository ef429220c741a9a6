"""Bodies a stranger can send: bytes that are not UTF-8 inside a JSON string, and JSON
nested far deeper than any request needs. Each is a 4xx problem+json, never a 500 and
never an ERROR line, and the key is checked before the body is read (no key or a wrong
key is a 401 whatever the body is)."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import ALICE_KEY
from tests.security.hostile_inputs import BODIES, KEYS, MALFORMED
from tests.support.gateway_app import gateway_app
from tests.support.stack import schema_with


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_a_hostile_body_is_a_4xx_problem_on_create_iterate_and_cancel(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_app() as gw:
        created = await gw.client.post(
            "/generations",
            json={"project_name": "shop", "schema": schema_with(1)},
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
        )
        gid = created.json()["generation_id"]
        for route in ("/generations", "/generations/iterate", f"/generations/{gid}/cancel"):
            for who, key in KEYS.items():
                headers = {"Content-Type": "application/json"}
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                response = await gw.client.post(route, content=body, headers=headers)
                where = f"POST {route} with {who}"
                assert response.headers["content-type"].startswith("application/problem+json"), (
                    where
                )
                assert response.status_code == (400 if key == ALICE_KEY else 401), (
                    f"{where}: {response.status_code} {response.text[:300]}"
                )
                if key == ALICE_KEY:
                    assert response.json()["detail"].startswith(MALFORMED), where
                    assert response.json()["problems"][0]["location"] == "body", where
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
