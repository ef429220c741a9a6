"""Who may read the gateway's `/metrics` (#19 item 10): KILN_METRICS_ACCESS.

`public` (anyone who reaches the port), `key` (a Bearer API key, like the API) or
`health-port` (not on the API port at all; on KILN_HEALTH_PORT with /healthz and /readyz).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.embedded_nats import free_port
from services.common.settings import SettingsError
from services.gateway.app import create_app
from tests.conftest import ALICE_KEY, make_settings
from tests.support.gateway_app import ALICE, gateway_app, gateway_settings
from tests.support.stack import running_stack

METRIC = b"kiln_gateway_requests_total"


async def test_public_metrics_need_no_key() -> None:
    async with gateway_app() as gw:
        answer = await gw.client.get("/metrics")
        assert answer.status_code == 200 and METRIC in answer.content


async def test_metrics_behind_a_key_need_a_bearer_api_key() -> None:
    async with gateway_app(gateway_settings(KILN_METRICS_ACCESS="key")) as gw:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": ALICE_KEY}):
            refused = await gw.client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert METRIC not in refused.content
        answer = await gw.client.get("/metrics", headers=ALICE)
        assert answer.status_code == 200 and METRIC in answer.content
        assert answer.headers["content-type"].startswith("text/plain")


async def test_metrics_on_the_health_port_only(tmp_path: Path, nats_server: Any) -> None:
    health_port = free_port()
    settings = make_settings(
        tmp_path,
        nats_server.url,
        KILN_METRICS_ACCESS="health-port",
        KILN_HEALTH_PORT=str(health_port),
    )
    async with running_stack(settings, orchestrator=False, storage=False) as stack:
        on_api_port = await stack.alice.get("/metrics")
        assert on_api_port.status_code == 404 and METRIC not in on_api_port.content
        openapi = (await stack.anonymous.get("/schema/openapi.json")).json()
        assert "/metrics" not in openapi["paths"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health_port}") as health:
            answer = await health.get("/metrics")
            assert answer.status_code == 200 and METRIC in answer.content
            ready = await health.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {"nats": "ok", "database": "ok"}


def test_metrics_on_the_health_port_need_a_health_port(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "nats://127.0.0.1:1", KILN_METRICS_ACCESS="health-port")
    with pytest.raises(SettingsError, match="KILN_HEALTH_PORT"):
        create_app(settings)


@pytest.mark.parametrize("value", ["open", "KEY"])
def test_an_unknown_metrics_access_is_refused_by_name(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="KILN_METRICS_ACCESS"):
        make_settings(tmp_path, "nats://127.0.0.1:1", KILN_METRICS_ACCESS=value)
