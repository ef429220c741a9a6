"""Secrets never leave: the Gemini key, the API keys, the token secret and SSE tokens.

The services run as separate processes with their real logging, a generation goes through
Gemini (a local fake that checks the key), and every log line, event and response is then
scanned for the known secret values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from httpx_sse import aconnect_sse

from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import read_generation
from tests.fakes.gemini_server import FakeGemini
from tests.support.client import wait_status
from tests.support.environment import service_env
from tests.support.processes import Processes
from tests.support.stack import schema_with

# A made-up key in Gemini's format, assembled so that secret scanners do not flag the file.
GEMINI_KEY = "AIza" + "SyKnownGeminiSecret-0123456789"
API_KEY = "kiln-known-api-key-secret-987654"
TOKEN_SECRET = "known-token-secret-value-5555"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(key=GEMINI_KEY) as server:
        yield server


async def test_no_secret_appears_in_logs_events_responses_or_the_openapi_document(
    tmp_path: Path, nats_server: EmbeddedNats, gemini: FakeGemini
) -> None:
    env = service_env(
        tmp_path,
        nats_server.url,
        KILN_API_KEYS=f"alice:{API_KEY}",
        KILN_SECRET=TOKEN_SECRET,
        GEMINI_API_KEY=GEMINI_KEY,
        KILN_GEMINI_BASE_URL=gemini.url,
        KILN_LLM_RETRY_DELAY="0.05",
    )
    processes = Processes(tmp_path, env)
    responses: list[httpx.Response] = []
    tokens: list[str] = []
    try:
        processes.migrate()
        processes.start("storage")
        processes.start("orchestrator")
        _, url = processes.gateway()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as alice:
            created = await alice.post(
                "/generations",
                json={"project_name": "secrets", "schema": schema_with(1), "provider": "gemini"},
            )
            assert created.status_code == 201, created.text
            responses.append(created)
            accepted = created.json()
            generation_id = accepted["generation_id"]
            tokens.append(accepted["sse_token"])
            async with httpx.AsyncClient(base_url=url, timeout=60) as anonymous:
                async with aconnect_sse(anonymous, "GET", accepted["stream_url"]) as source:
                    async for message in source.aiter_sse():
                        if message.event in {"generation.completed", "generation.failed"}:
                            break
                # Failed attempts are logged too: a wrong key and a tampered token.
                responses.append(
                    await anonymous.get(
                        "/generations", headers={"Authorization": f"Bearer {API_KEY}x"}
                    )
                )
                responses.append(
                    await anonymous.get(
                        f"/generations/{generation_id}/stream?token={accepted['sse_token']}x"
                    )
                )
            await wait_status(alice, generation_id, "completed", timeout=40, every_s=0.1)
            renewed = await alice.post(f"/generations/{generation_id}/stream-token")
            tokens.append(renewed.json()["sse_token"])
            for path in [
                f"/generations/{generation_id}",
                f"/generations/{generation_id}/files",
                f"/generations/{generation_id}/events",
                f"/generations/{generation_id}/archive",
                f"/generations/{generation_id}/diff",
                "/projects",
                "/schema/openapi.json",
                "/metrics",
                "/nope",
            ]:
                responses.append(await alice.get(path))
            responses.append(await alice.post("/generations", content=b"{not json"))
    finally:
        processes.stop_all()

    nc = await nats.connect(nats_server.url)
    try:
        events = await read_generation(nc.jetstream(), generation_id)
    finally:
        await nc.close()
    assert events, "the generation has events"
    assert gemini.calls_for("plan"), "the fake Gemini was really called"

    secrets = {
        "the Gemini key": GEMINI_KEY,
        "the API key": API_KEY,
        "the token secret": TOKEN_SECRET,
    }
    places: dict[str, str] = {
        **{f"log of {p.service}": p.log for p in processes.started},
        **{f"event {e.stream_seq}": e.data.decode() for e in events},
        **{
            f"response {r.request.method} {r.request.url.path} ({r.status_code})": (
                r.text
                if "zip" not in r.headers.get("content-type", "")
                else r.content.decode("latin-1")
            )
            + str(dict(r.headers))
            for r in responses
        },
    }
    for place, text in places.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} appears in the {place}"
    for place, text in places.items():
        if place.startswith("log of"):
            for token in tokens:
                assert token not in text, f"an SSE token appears in the {place}"
    gateway_log = next(p.log for p in processes.started if p.service == "gateway")
    assert "token=***" in gateway_log, "the access log shows stream requests, token redacted"
