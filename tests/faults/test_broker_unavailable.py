"""The broker stopped under a running gateway: every route that needs JetStream answers
503 with Retry-After (JetStream's "not now"), never a 500, logs it as waiting rather than
as an error, and answers 200 again once the broker is back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from services.cli.main import main
from services.common.embedded_nats import EmbeddedNats
from tests.conftest import ALICE_KEY, make_settings
from tests.support.metrics import sample_total
from tests.support.stack import SCHEMA_ONE, Stack, running_stack
from tests.support.waiting import eventually


def _requests(stack: Stack, gid: str) -> list[tuple[str, str, dict[str, object] | None]]:
    create = {"project_name": "shop", "schema": SCHEMA_ONE, "prompt": "a shop"}
    return [
        ("GET", f"/generations/{gid}", None),
        ("GET", f"/generations/{gid}/files", None),
        ("POST", f"/generations/{gid}/stream-token", None),
        ("GET", f"/generations/{gid}/archive", None),
        ("POST", f"/generations/{gid}/cancel", None),
        ("POST", "/generations/iterate", {"parent_generation_id": gid, "modification_prompt": "x"}),
        ("POST", "/generations", create),
    ]


async def test_a_stopped_broker_is_a_503_with_retry_after_on_every_route(
    tmp_path: Path, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        gid = (await stack.create_completed())["generation_id"]
        nats_server.kill()

        async def send(method: str, path: str, body: dict[str, object] | None) -> httpx.Response:
            return await stack.alice.request(method, path, json=body)

        answers: dict[str, list[httpx.Response]] = {}
        for _ in range(2):  # the client first reconnecting, then given up on for a while
            polled = await asyncio.gather(*(send(*r) for r in _requests(stack, gid)))
            for (method, path, _), response in zip(_requests(stack, gid), polled, strict=True):
                answers.setdefault(f"{method} {path}", []).append(response)
        for route, responses in answers.items():
            for response in responses:
                assert response.status_code == 503, f"{route}: {response.text[:300]}"
                assert int(response.headers["Retry-After"]) >= 1, route
                assert response.headers["content-type"].startswith("application/problem+json")

        nats_server.start()

        async def answers() -> bool:
            return (await stack.alice.get(f"/generations/{gid}")).status_code == 200

        await eventually(answers, 60, 0.2, what="the status answered again after the restart")
        assert (await stack.alice.get(f"/generations/{gid}/files")).status_code == 200
    # Every service (the gateway, and the orchestrator and storage waiting on their
    # consumers) logs the broker's absence as waiting, not as an error.
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("services.")
    ]
    assert errors == []
    waiting = [r for r in caplog.records if r.name == "services.common.broker"]
    assert waiting and {r.levelno for r in waiting} == {logging.WARNING}, "said, as a warning"


async def test_the_cli_waits_out_a_broker_restart(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        gid = (await stack.create_completed())["generation_id"]
        before = _status_503s()
        nats_server.kill()

        def status() -> int:
            try:
                main(["status", gid, "--url", stack.url, "--api-key", ALICE_KEY])
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else 2
            return 0

        cli = asyncio.create_task(asyncio.to_thread(status))
        # Restart once the gateway has answered the CLI's first request with a 503.
        await eventually(lambda: _status_503s() > before, 60, 0.1, what="the CLI's first 503")
        nats_server.start()
        code = await asyncio.wait_for(cli, 90)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "completed 100%" in out


def _status_503s() -> float:
    """How many 503s this process's gateway has answered to a GET of a generation."""
    return sample_total(
        "kiln_gateway_requests_total",
        lambda labels: (
            labels.get("status") == "503"
            and labels.get("method") == "GET"
            and labels.get("route", "").startswith("/generations/{generation_id")
        ),
    )
