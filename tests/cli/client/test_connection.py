"""Where the gateway is, who the caller is, and the gateway's errors as one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest

from services.cli.client.commands import once
from services.cli.client.connection import (
    DEFAULT_URL,
    MAX_RETRY_AFTER_S,
    RETRIES_ON_503,
    ClientError,
    Gateway,
    api_key,
    gateway_url,
    problem_text,
)
from services.cli.client.responses import GenerationStatus


def _args(**values: str | None) -> argparse.Namespace:
    return argparse.Namespace(url=values.get("url"), api_key=values.get("api_key"))


def test_flags_win_over_the_environment_which_wins_over_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILN_URL", raising=False)
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    assert gateway_url(_args()) == DEFAULT_URL
    assert api_key(_args()) is None

    (tmp_path / ".kiln").mkdir()
    (tmp_path / ".kiln" / "dev-api-key").write_text("dev-key\n")
    assert api_key(_args()) == "dev-key"

    monkeypatch.setenv("KILN_URL", "https://kiln.example/")
    monkeypatch.setenv("KILN_API_KEY", "env-key")
    assert gateway_url(_args()) == "https://kiln.example"
    assert api_key(_args()) == "env-key"

    flags = _args(url="http://other:9000", api_key="flag-key")
    assert (gateway_url(flags), api_key(flags)) == ("http://other:9000", "flag-key")


def test_a_problem_is_one_line_with_status_title_and_detail() -> None:
    problem = httpx.Response(
        400,
        json={"title": "Bad Request", "detail": "The schema is not valid:\n  entities: empty"},
        headers={"Content-Type": "application/problem+json"},
    )
    assert problem_text(problem) == "400 Bad Request: The schema is not valid: entities: empty"
    assert problem_text(httpx.Response(502, text="<html>\nbad gateway\n</html>")) == (
        "502 Bad Gateway: <html> bad gateway </html>"
    )


def test_an_answer_that_is_not_the_gateways_is_a_client_error() -> None:
    gateway = Gateway(
        "http://kiln.test",
        None,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"hello": 1})),
    )
    with pytest.raises(ClientError, match="not what a Kiln gateway sends"):
        gateway.decoded("GET", "/generations/g-1", GenerationStatus)
    gateway.close()


def test_the_api_key_goes_in_the_authorization_header() -> None:
    seen: list[str | None] = []

    def script(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(404, json={"title": "Not Found", "detail": "There is no project."})

    gateway = Gateway("http://kiln.test", "k-1", transport=httpx.MockTransport(script))
    with pytest.raises(ClientError, match=r"^404 Not Found: There is no project\.$"):
        gateway.request("GET", "/projects/p-1")
    assert seen == ["Bearer k-1"]
    gateway.close()


def _answers(*statuses: tuple[int, str]) -> tuple[list[str], httpx.MockTransport]:
    seen: list[str] = []
    queue = list(statuses)

    def script(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        status, retry_after = queue.pop(0) if len(queue) > 1 else queue[0]
        if status == 200:
            return httpx.Response(200, json={})
        body = {"title": "Service Unavailable", "detail": "The broker is not answering."}
        return httpx.Response(status, json=body, headers={"Retry-After": retry_after})

    return seen, httpx.MockTransport(script)


def test_a_503_is_retried_after_its_retry_after_within_a_bound() -> None:
    waits: list[float] = []
    seen, transport = _answers((503, "3"), (503, "600"), (503, "0"), (200, ""))
    gateway = Gateway("http://kiln.test", "k", transport=transport, sleep=waits.append)
    assert gateway.request("GET", "/generations/g-1").status_code == 200
    assert waits == [3.0, MAX_RETRY_AFTER_S, 0.5]
    assert len(seen) == 4

    waits.clear()
    seen, transport = _answers((503, "1"))
    gateway = Gateway("http://kiln.test", "k", transport=transport, sleep=waits.append)
    with pytest.raises(ClientError, match=r"^503 Service Unavailable"):
        gateway.request("POST", "/generations/g-1/stream-token")
    assert len(seen) == RETRIES_ON_503 + 1 and len(waits) == RETRIES_ON_503


@pytest.mark.parametrize("path", ["/generations", "/generations/iterate"])
def test_a_503_to_a_create_without_a_key_is_not_repeated(path: str) -> None:
    waits: list[float] = []
    seen, transport = _answers((503, "1"), (200, ""))
    gateway = Gateway("http://kiln.test", "k", transport=transport, sleep=waits.append)
    with pytest.raises(ClientError, match=r"^503"):
        gateway.request("POST", path, json={})
    assert seen == [f"POST {path}"] and waits == []


@pytest.mark.parametrize("path", ["/generations", "/generations/iterate"])
def test_a_create_with_an_idempotency_key_is_repeated_on_a_503_or_a_lost_answer(
    path: str,
) -> None:
    waits: list[float] = []
    seen, transport = _answers((503, "2"), (200, ""))
    gateway = Gateway("http://kiln.test", "k", transport=transport, sleep=waits.append)
    key = {"Idempotency-Key": "k-1"}
    assert gateway.request("POST", path, json={}, headers=key).status_code == 200
    assert seen == [f"POST {path}"] * 2 and waits == [2.0]

    sent: list[str | None] = []

    def lost_then_answered(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("idempotency-key"))
        if len(sent) == 1:
            raise httpx.ReadTimeout("the answer never came", request=request)
        return httpx.Response(201, json={})

    mock = httpx.MockTransport(lost_then_answered)
    gateway = Gateway("http://kiln.test", "k", transport=mock, sleep=waits.append)
    assert gateway.request("POST", path, json={}, headers=key).status_code == 201
    assert sent == ["k-1", "k-1"], "the same key both times"


def test_the_cli_sends_a_new_key_per_command_and_the_same_on_its_retries() -> None:
    first, second = once(), once()
    assert first["Idempotency-Key"] != second["Idempotency-Key"]
    assert len(first["Idempotency-Key"]) == 36
