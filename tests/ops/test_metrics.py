"""`/metrics` of every service moves while generations run; `/healthz` and `/readyz` answer."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.ops.cluster import (
    Cluster,
    Service,
    SSEEvent,
    client,
    create,
    scrape,
    wait_status,
    watch,
)
from tests.storage.conftest import POSTGRES_ENV
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GATEWAY = (
    "kiln_gateway_requests_total",
    "kiln_gateway_sse_events_delivered_total",
    "kiln_gateway_replay_seconds_count",
)
ORCHESTRATOR = (
    "kiln_orchestrator_phase_seconds_count",
    'kiln_orchestrator_generations_total{status="completed"}',
    "kiln_orchestrator_llm_tokens_total",
    "kiln_orchestrator_llm_latency_seconds_count",
)
STORAGE = (
    "kiln_storage_events_applied_total",
    "kiln_storage_batch_size_count",
    "kiln_storage_apply_seconds_count",
    "kiln_storage_applied_stream_seq",
)


async def test_every_service_reports_its_metrics_moving(cluster: Cluster) -> None:
    storage = cluster.storage()
    llm = FakeOpenAI().start()
    try:
        orchestrator = cluster.orchestrator(KILN_OFFLINE_PHASE_DELAY="0.3", **llm.env())
        await _run_generations(cluster, storage, orchestrator, llm.env())
    finally:
        llm.stop()
    assert llm.calls, "the openai provider called the fake LLM"


async def _run_generations(
    cluster: Cluster, storage: Service, orchestrator: Service, llm_env: dict[str, str]
) -> None:
    gateway = cluster.gateway(**llm_env)
    async with httpx.AsyncClient(timeout=30) as http:
        for service in (storage, orchestrator, gateway):
            assert (await http.get(f"{service.url}/healthz")).status_code == 200
            ready = await http.get(f"{service.url}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["nats"] == "ok"
        assert (await http.get(f"{storage.url}/readyz")).json()["checks"]["database"] == "ok"
        assert (await http.get(f"{gateway.url}/readyz")).json()["checks"]["database"] == "ok"

    before = {s: await scrape(s.url) for s in (storage, orchestrator, gateway)}
    async with client(gateway.url) as alice:
        accepted = await create(alice)
        received: list[SSEEvent] = []
        watcher = asyncio.create_task(watch(gateway.url, accepted["stream_url"], received=received))
        # While the stream is open, the gateway counts it.
        await eventually(lambda: bool(received), 120)
        during = await scrape(gateway.url)
        assert during["kiln_gateway_sse_connections"] >= 1
        running = await scrape(orchestrator.url)
        await watcher
        assert received[-1].type == "generation.completed"
        await wait_status(alice, accepted["generation_id"], "completed")

        # A modification the offline provider does not understand fails, counted by kind.
        failing = await alice.post(
            "/generations/iterate",
            json={
                "parent_generation_id": accepted["generation_id"],
                "modification_prompt": "make it sparkle like a disco ball",
            },
        )
        assert failing.status_code == 201, failing.text
        await wait_status(alice, failing.json()["generation_id"], "failed")

        # One through an LLM API (a fake OpenAI-compatible one): latency and tokens.
        through_llm = await create(alice, project_name="llm-shop", provider="openai")
        await wait_status(alice, through_llm["generation_id"], "completed")

    assert running["kiln_orchestrator_generations_running"] == 1
    after = {s: await scrape(s.url) for s in (storage, orchestrator, gateway)}
    storage_names = STORAGE
    if not os.environ.get(POSTGRES_ENV):  # the cluster is on a SQLite file
        storage_names += ("kiln_storage_wal_checkpoint_seconds_count",)
    for service, names in (
        (gateway, GATEWAY),
        (orchestrator, ORCHESTRATOR),
        (storage, storage_names),
    ):
        for name in names:
            assert after[service].get(name, 0) > before[service].get(name, 0), name
    assert after[gateway]["kiln_gateway_sse_connections"] == 0
    assert after[orchestrator]["kiln_orchestrator_generations_running"] == 0
    assert after[orchestrator]["kiln_orchestrator_failures_total"] == 1
    assert after[orchestrator]['kiln_orchestrator_generations_total{status="failed"}'] == 1
    assert (
        after[gateway][
            'kiln_gateway_requests_total{method="POST",route="/generations",status="201"}'
        ]
        == 2
    )

    # A 404 without a route, and a 405 (a route without that method), are counted and timed too.
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{gateway.url}/no/such/route")).status_code == 404
        assert (await http.delete(f"{gateway.url}/healthz")).status_code == 405
        types = {(await http.get(f"{s.url}/metrics")).headers["content-type"] for s in after}
    assert types == {"text/plain; version=0.0.4; charset=utf-8"}, "one content type"
    unmatched = await scrape(gateway.url)
    assert (
        unmatched['kiln_gateway_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    )
    assert unmatched['kiln_gateway_request_seconds_count{method="GET",route="unmatched"}'] == 1
    assert (
        unmatched['kiln_gateway_requests_total{method="DELETE",route="unmatched",status="405"}']
        == 1
    )
    assert (
        after[gateway]['kiln_gateway_request_seconds_count{method="POST",route="/generations"}']
        == 2
    )

    # Each service exports its own metrics only, never another's as zeros.
    for service, own in (
        (gateway, "kiln_gateway_"),
        (orchestrator, "kiln_orchestrator_"),
        (storage, "kiln_storage_"),
    ):
        foreign = [n for n in after[service] if n.startswith("kiln_") and not n.startswith(own)]
        assert not foreign, (own, foreign[:5])

    # The projector caught up: its lag gauge comes back to zero.
    async def caught_up() -> bool:
        return (await scrape(storage.url))["kiln_storage_lag_events"] == 0

    await eventually(caught_up, timeout=60, every_s=0.2)
